"""What the embedded PostgreSQL keeps under ``$STUDYHUB_HOME``: its directories, the state file
(ports and components, no secrets), the names of its roles and database, and free ports.

Layout under ``$STUDYHUB_HOME`` (default ``.studyhub/``)::

    state.json          ports and components (no secrets)
    profiles.d/         profile files the commands own (``studyhub.profile_files``)
    secrets/pgpass      0600 libpq passfile for every local role (the invoking user's)
    server/             0700, owned by the server user: replicator passfile, pgbouncer config
    primary/ replica/   data directories (``replicas/replica2`` … for more read replicas)
    wal-archive/        0700, owned by the server user: the primary's archived WAL (for PITR)
    basebackups/ forks/ base backups and point-in-time forks (``studyhub cluster``)
    logs/               server and pooler logs
    audit.log           audit lines of destructive commands (kept by ``local destroy``)

The ``local`` profile is read from here (``local_profile``): ``studyhub.profiles`` asks this
module, which needs nothing from it in return.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studyhub.atomic_file import write_atomically
from studyhub.errors import ConfigError, LocalClusterError
from studyhub.paths import studyhub_home
from studyhub.profile_model import Profile, ReadEndpoint

APP_DATABASE = "studyhub"
SUPERUSER = "postgres"
APP_ROLE = "studyhub_app"
OPS_ROLE = "studyhub_ops"
REPLICATION_ROLE = "studyhub_replicator"
REPLICA_SLOT = "studyhub_replica"
REPLICA_APP_NAME = "studyhub_replica"
# The first replica is "replica" (directory replica/, slot studyhub_replica); more are
# "replica2" … (directory replicas/replica2, slot and application name studyhub_replica2).
MAX_REPLICAS = 8  # max_wal_senders and max_replication_slots are 10
EXTRA_REPLICA_RE = re.compile(r"replica([2-9]|[1-9][0-9])")
DEFAULT_PORT_RANGE = (54320, 54999)
STATE_VERSION = 1

SEGMENT_RE = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")  # a WAL file name: fullmatch
BACKUP_META = "backup.json"  # in each complete base backup's directory


@dataclass
class LocalState:
    version: int = STATE_VERSION
    primary_port: int | None = None
    replica_port: int | None = None
    pooler_port: int | None = None
    has_replica: bool = False
    has_pooler: bool = False
    bootstrapped: bool = False
    created_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    extra_replicas: dict[str, int | None] = field(default_factory=dict)  # "replica2" → port

    def replica_names(self) -> list[str]:
        """The local read replicas, in order: "replica" (when it exists), then replica2 …"""
        extras = sorted(self.extra_replicas, key=lambda n: int(n.removeprefix("replica")))
        return (["replica"] if self.has_replica else []) + extras

    def replica_port_of(self, name: str) -> int | None:
        return self.replica_port if name == "replica" else self.extra_replicas.get(name)

    def taken_ports(self) -> set[int]:
        """Every port this cluster's servers have (primary, replicas, pooler)."""
        ports = {self.primary_port, self.replica_port, self.pooler_port,
                 *self.extra_replicas.values()}
        return {p for p in ports if p is not None}

    def next_replica_name(self) -> str:
        if not self.has_replica:
            return "replica"
        n = 2
        while f"replica{n}" in self.extra_replicas:
            n += 1
        return f"replica{n}"


@dataclass(frozen=True)
class ReplicaNode:
    """One local read replica: its name, data directory, port and replication slot (the
    slot's name is also the application name it streams with)."""

    name: str
    datadir: Path
    port: int | None
    slot: str


def replica_slot(name: str) -> str:
    """The replication slot (and application_name) of local replica ``name``."""
    return REPLICA_SLOT if name == "replica" else f"studyhub_{name}"


class LocalHome:
    """The directories and the state file of the local cluster under one home directory."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or studyhub_home()).absolute()
        self.state_file = self.home / "state.json"
        self.secrets_dir = self.home / "secrets"
        self.passfile = self.secrets_dir / "pgpass"
        self.server_dir = self.home / "server"
        self.logs_dir = self.home / "logs"
        self.primary_dir = self.home / "primary"
        self.replica_dir = self.home / "replica"
        self.replicas_dir = self.home / "replicas"
        self.wal_archive_dir = self.home / "wal-archive"
        self.basebackups_dir = self.home / "basebackups"
        self.forks_dir = self.home / "forks"
        self.replicator_passfile = self.server_dir / "replicator.pgpass"
        self.pgbouncer_ini = self.server_dir / "pgbouncer.ini"
        self.pgbouncer_userlist = self.server_dir / "userlist.txt"
        self.pgbouncer_pidfile = self.server_dir / "pgbouncer.pid"
        self.audit_log = self.home / "audit.log"

    # ------------------------------------------------------------------ state
    def load_state(self) -> LocalState:
        if not self.state_file.exists():
            return LocalState()
        data = json.loads(self.state_file.read_text())
        known = {k: v for k, v in data.items() if k in LocalState.__dataclass_fields__}
        return LocalState(**known)

    def save_state(self, state: LocalState) -> None:
        text = json.dumps(asdict(state), indent=2) + "\n"
        write_atomically(self.state_file, lambda f: f.write(text.encode()), mode=0o644,
                         overwrite=True)

    def replica_node_dir(self, name: str) -> Path:
        return self.replica_dir if name == "replica" else self.replicas_dir / name

    def replica_nodes(self, state: LocalState | None = None) -> list[ReplicaNode]:
        """The local read replicas the state file records, in order."""
        state = state or self.load_state()
        return [ReplicaNode(n, self.replica_node_dir(n), state.replica_port_of(n),
                            replica_slot(n)) for n in state.replica_names()]

    @property
    def initialized(self) -> bool:
        return (self.primary_dir / "PG_VERSION").exists() and self.load_state().bootstrapped

    # ----------------------------------------------------------- base backups
    def read_base_backups(self) -> list[dict[str, Any]]:
        """Complete base backups (those with backup.json; never a ``.part``), oldest first: each
        one's backup.json with its ``path`` added."""
        root = self.basebackups_dir
        if not root.is_dir():
            return []
        found = []
        for d in root.iterdir():
            meta = d / BACKUP_META
            if d.is_dir() and not d.name.endswith(".part") and meta.exists():
                data = json.loads(meta.read_text())
                data["path"] = str(d)
                found.append(data)
        return sorted(found, key=lambda b: b["finished_at"])

    # ------------------------------------------------------------------ forks
    def read_fork_metas(self) -> list[dict[str, Any]]:
        """Every point-in-time fork's metadata file (``forks/NAME.json``: name, port,
        target_time, created_at, status …), by name."""
        if not self.forks_dir.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.forks_dir.glob("*.json"))]


def local_profile(home: Path | None = None, *, explicit: bool = False) -> Profile:
    """The ``local`` profile: the primary's port, and the pooler and the read replicas when the
    state file says they exist (one ReadEndpoint each); passwords come from the 0600
    passfile."""
    paths = LocalHome(home)
    state = paths.load_state()
    if not state.primary_port:
        raise ConfigError(
            f"the local cluster under {paths.home} is not set up; run: studyhub local up"
        )
    return Profile(
        name="local",
        kind="local",
        host="127.0.0.1",
        port=state.primary_port,
        database=APP_DATABASE,
        sslmode="disable",
        users={"app": APP_ROLE, "ops": OPS_ROLE, "admin": SUPERUSER},
        password_sources={r: f"passfile {paths.passfile}" for r in ("app", "ops", "admin")},
        passfile=paths.passfile,
        pooler_port=state.pooler_port if state.has_pooler else None,
        replicas=tuple(ReadEndpoint(n.name, "127.0.0.1", n.port)
                       for n in paths.replica_nodes(state) if n.port),
        explicit=explicit,
    )


# ---------------------------------------------------------------------- ports
def port_range() -> tuple[int, int]:
    raw = os.environ.get("STUDYHUB_PORT_RANGE")
    if not raw:
        return DEFAULT_PORT_RANGE
    try:
        lo, hi = (int(x) for x in raw.split("-", 1))
    except ValueError:
        raise LocalClusterError(
            f"STUDYHUB_PORT_RANGE={raw!r} is not of the form LOW-HIGH (e.g. 54320-54999)"
        ) from None
    if not (1024 <= lo <= hi <= 65535):
        raise LocalClusterError(f"STUDYHUB_PORT_RANGE={raw!r} must lie within 1024-65535")
    return lo, hi


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now. Like PostgreSQL and PgBouncer we set
    SO_REUSEADDR, so connections of a just-stopped server lingering in TIME_WAIT do not make
    its port look taken (a restart keeps its port); a live listener still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_free_port(exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    lo, hi = port_range()
    span = hi - lo + 1
    start = (os.getpid() * 7919 + int(time.monotonic() * 1000)) % span  # spread parallel runs
    for i in range(span):
        port = lo + (start + i) % span
        if port not in exclude and port_is_free(port):
            return port
    raise LocalClusterError(
        f"no free TCP port in {lo}-{hi} on 127.0.0.1; free one or set STUDYHUB_PORT_RANGE"
    )
