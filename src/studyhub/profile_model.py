"""Profiles as data: where each role connects (``Endpoint``), the resolved ``Profile`` and the
rule for changes (``Profile.require_changes_allowed``). No configuration is read here.

``studyhub.profiles`` resolves profiles (settings, secrets file, the local cluster's state) and
re-exports these names; import them from there. They live in this module of their own so the
embedded server (``studyhub.local``), which describes itself as a Profile, sits below
``studyhub.profiles`` without an import loop: profiles → local → profile_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

from pydantic import SecretStr

from studyhub.errors import ConfigError, RefusedError

Role = Literal["app", "ops", "admin", "replica", "pooler"]
ROLES: tuple[str, ...] = ("app", "ops", "admin", "replica", "pooler")


@dataclass(frozen=True)
class Endpoint:
    """One place to connect to, as one user. Holds no password."""

    host: str
    port: int
    database: str
    user: str
    sslmode: str
    passfile: Path | None = None
    sslrootcert: str | None = None
    via_pooler: bool = False

    def conninfo(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "sslmode": self.sslmode,
        }
        if self.passfile:
            params["passfile"] = str(self.passfile)
        if self.sslrootcert:
            params["sslrootcert"] = self.sslrootcert
        return params

    def url(self) -> str:
        """A libpq URL without any password (a passfile path may be in it)."""
        query: dict[str, str] = {"sslmode": self.sslmode}
        if self.passfile:
            query["passfile"] = str(self.passfile)
        if self.sslrootcert:
            query["sslrootcert"] = self.sslrootcert
        return (
            f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/"
            f"{quote(self.database, safe='')}?{urlencode(query, safe='/')}"
        )


@dataclass(frozen=True)
class ReadEndpoint:
    """One read-only node of a profile's cluster (a streaming replica): its name ("replica",
    "replica2", a DigitalOcean replica's name), where it listens, and its region if known."""

    name: str
    host: str
    port: int
    region: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "port": self.port, "region": self.region}


@dataclass(frozen=True)
class Profile:
    """A resolved profile: where each role connects and where its password comes from."""

    name: str
    kind: Literal["local", "remote"]
    host: str
    port: int
    database: str
    sslmode: str
    users: dict[str, str]
    passwords: dict[str, SecretStr] = field(default_factory=dict, repr=False)
    password_sources: dict[str, str] = field(default_factory=dict)
    passfile: Path | None = None
    sslrootcert: str | None = None
    pooler_port: int | None = None
    pooler_database: str | None = None
    # The first read endpoint (kept for code and settings written for a single replica): a
    # profile given only these gets one ReadEndpoint named "replica" in ``replicas``; a profile
    # given ``replicas`` gets these set from its first entry.
    replica_host: str | None = None
    replica_port: int | None = None
    read_only: bool = False
    protected: bool = False
    explicit: bool = False  # named on the command line (needed for destructive work on production)
    do_cluster_id: str | None = None
    replicas: tuple[ReadEndpoint, ...] = ()  # the read endpoints, in order of preference
    pooler_host: str | None = None  # the pooler's host when it is not the primary's

    # (the first endpoint as the old fields last showed it: tells ``dataclasses.replace`` of
    # replica_host/replica_port, which moves or clears the first endpoint, from construction)
    _first_seen: tuple[str | None, int | None] | None = field(default=None, repr=False,
                                                              compare=False)

    def __post_init__(self) -> None:
        replicas = tuple(self.replicas)
        legacy = (self.replica_host, self.replica_port)
        if self._first_seen is not None and legacy != self._first_seen:
            if self.replica_host and self.replica_port:  # replace(): the first endpoint moves
                first = replicas[0] if replicas else ReadEndpoint("replica", "", 0)
                replicas = (ReadEndpoint(first.name, self.replica_host, self.replica_port,
                                         first.region), *replicas[1:])
            elif self.replica_host is None and self.replica_port is None:
                replicas = ()  # replace(): no replica any more
        elif self._first_seen is None and not replicas and self.replica_host \
                and self.replica_port:  # the old single-replica settings
            replicas = (ReadEndpoint("replica", self.replica_host, self.replica_port),)
        names = [r.name for r in replicas]
        if len(set(names)) != len(names):
            raise ConfigError(f"profile {self.name}: read endpoint names repeat: "
                              f"{', '.join(names)}")
        object.__setattr__(self, "replicas", replicas)
        first_pair = (replicas[0].host, replicas[0].port) if replicas else (None, None)
        object.__setattr__(self, "replica_host", first_pair[0])
        object.__setattr__(self, "replica_port", first_pair[1])
        object.__setattr__(self, "_first_seen", first_pair)

    def read_endpoint(self, name: str | None = None) -> ReadEndpoint:
        """The read endpoint named ``name`` (default: the first); a clear error otherwise."""
        if not self.replicas:
            raise ConfigError(
                f"profile {self.name} has no read replica"
                + (" (start one with: studyhub local up --replica)" if self.is_local else "")
            )
        if name is None:
            return self.replicas[0]
        for r in self.replicas:
            if r.name == name:
                return r
        raise ConfigError(f"profile {self.name} has no replica named {name!r} "
                          f"(replicas: {', '.join(r.name for r in self.replicas)})")

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def require_changes_allowed(self, action: str) -> None:
        """The rule for every change, wherever it is asked for (command line, dashboard, a
        schedule): a protected profile (production) must have been named explicitly
        (``--profile production``), and a read-only profile refuses every change. Raises
        RefusedError naming the action; nothing has been done yet."""
        if self.protected and not self.explicit:
            raise RefusedError(
                f"refusing to {action} on {self.name}: name it explicitly with "
                f"--profile {self.name}")
        if self.read_only:
            raise RefusedError(f"refusing to {action}: profile {self.name} is marked read-only")

    def endpoint(self, role: str = "app", database: str | None = None, *,
                 replica: str | None = None) -> Endpoint:
        """Where ``role`` connects: app/ops/admin to the primary's own port, replica to a read
        endpoint (``replica`` names one; default the first), pooler to the transaction pooler
        (as the app user)."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        db = database or self.database
        common = dict(sslmode=self.sslmode, passfile=self.passfile, sslrootcert=self.sslrootcert)
        if role == "replica":
            r = self.read_endpoint(replica)
            return Endpoint(r.host, r.port, db, self.users["app"], **common)
        if role == "pooler":
            if not self.pooler_port:
                raise ConfigError(
                    f"profile {self.name} has no connection pooler"
                    + (" (start one with: studyhub local up --pooler)" if self.is_local else "")
                )
            return Endpoint(
                self.pooler_host or self.host,
                self.pooler_port,
                self.pooler_database or db,
                self.users["app"],
                via_pooler=True,
                **common,
            )
        return Endpoint(self.host, self.port, db, self.users[role], **common)

    def password_for(self, user: str) -> SecretStr | None:
        for role, name in self.users.items():
            if name == user and role in self.passwords:
                return self.passwords[role]
        return None

    def describe(self) -> dict[str, Any]:
        """Everything about the profile that may be shown: no secret, only where it comes from."""
        return {
            "name": self.name,
            "kind": self.kind,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "sslmode": self.sslmode,
            "users": dict(self.users),
            "passwords": {
                role: self.password_sources.get(role, "not set (libpq ~/.pgpass)")
                for role in ("app", "ops", "admin")
            },
            "pooler_port": self.pooler_port,
            "pooler_database": self.pooler_database,
            "replica": f"{self.replica_host}:{self.replica_port}" if self.replica_port else None,
            "replicas": [r.describe() for r in self.replicas],
            "read_only": self.read_only,
            "protected": self.protected,
        }
