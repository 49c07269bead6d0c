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
    """One read replica the profile knows: its name, where it listens, its region (if known)."""

    name: str  # "replica", "replica2", a DigitalOcean node name
    host: str
    port: int
    region: str | None = None


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
    replica_host: str | None = None
    replica_port: int | None = None
    read_only: bool = False
    protected: bool = False
    explicit: bool = False  # named on the command line (needed for destructive work on production)
    do_cluster_id: str | None = None
    # The read endpoints, in order (see read_endpoints()).
    replicas: tuple[ReadEndpoint, ...] = ()

    def read_endpoints(self) -> tuple[ReadEndpoint, ...]:
        """``replicas``; a profile with only replica_host/replica_port has one, "replica"."""
        if self.replicas:
            return self.replicas
        if self.replica_host and self.replica_port:
            return (ReadEndpoint("replica", self.replica_host, self.replica_port),)
        return ()

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
        """Where ``role`` connects: app/ops/admin to the primary's own port, replica to the
        read endpoint named ``replica`` (default: the first), pooler to the transaction pooler
        (as the app user)."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        db = database or self.database
        common = dict(sslmode=self.sslmode, passfile=self.passfile, sslrootcert=self.sslrootcert)
        if role == "replica":
            endpoints = self.read_endpoints()
            if not endpoints:
                raise ConfigError(
                    f"profile {self.name} has no read replica"
                    + (" (start one with: studyhub local up --replica)" if self.is_local else "")
                )
            chosen = endpoints[0] if replica is None else next(
                (r for r in endpoints if r.name == replica), None)
            if chosen is None:
                raise ConfigError(f"profile {self.name} has no read replica named {replica!r}; "
                                  f"it has: {', '.join(r.name for r in endpoints)}")
            return Endpoint(chosen.host, chosen.port, db, self.users["app"], **common)
        if role == "pooler":
            if not self.pooler_port:
                raise ConfigError(
                    f"profile {self.name} has no connection pooler"
                    + (" (start one with: studyhub local up --pooler)" if self.is_local else "")
                )
            return Endpoint(
                self.host,
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
            "replica": f"{self.replica_host}:{self.replica_port}" if self.replica_port else None,
            "read_only": self.read_only,
            "protected": self.protected,
        }
