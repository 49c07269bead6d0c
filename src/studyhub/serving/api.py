"""The API's settings: which profile, whether to use the pooler and the replica, the lag bound
(``ApiSettings``); where its token secret comes from (``load_token_secret``); which servers it
connects to (``choose_topology``).

Values come from the ``studyhub serve`` options or the environment (``STUDYHUB_API_*``, e.g.
``STUDYHUB_API_MAX_REPLICA_LAG_S=2``): ``studyhub serve`` puts its options there and starts
uvicorn with ``API_APP``, the factory every worker process calls. The token secret is *not* a
setting: it comes from, in order,

1. ``STUDYHUB_API_SECRET`` (at least 32 characters);
2. the file named by ``STUDYHUB_API_SECRET_FILE`` (refused unless mode 0600);
3. for the local profile only: ``$STUDYHUB_HOME/secrets/api_token.key``, created 0600 on first
   use.

Never from the command line.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from studyhub.errors import ConfigError
from studyhub.local import LocalCluster
from studyhub.local.proc import write_private
from studyhub.profile_model import ReadEndpoint
from studyhub.profiles import Profile

# The app factory uvicorn imports (by name: nothing here imports the API) in each worker.
API_APP = "studyhub.api.app:app_from_environment"
ENV_PREFIX = "STUDYHUB_API_"


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    profile: str | None = None  # None → $STUDYHUB_PROFILE or local
    # None = automatic: the pooler when the profile has one (local: `local up --pooler`;
    # remote: `pooler_database` set), the replica when the profile has one.
    use_pooler: bool | None = None
    use_replica: bool | None = None

    # Reads go to the replica only while its measured replay lag is at most this.
    max_replica_lag_s: float = Field(1.0, gt=0)
    # How often the replica's replay position and the primary's WAL position are sampled; the
    # measured lag is an upper bound with this resolution.
    replica_probe_interval_s: float = Field(0.2, gt=0)
    replica_probe_timeout_s: float = Field(2.0, gt=0)
    # When the primary cannot be reached: reads are served by a replica whose staleness (the
    # time since the newest primary position it is known to have replayed) is at most this,
    # with the X-StudyHub-Stale-Seconds header; beyond it, 503 like writes.
    max_stale_read_s: float = Field(60.0, ge=0)
    # Which of the profile's read endpoints to use, by name, comma-separated (default: all).
    read_endpoints: str | None = None
    # Prefer read endpoints in this region (ties broken by lag, then outstanding reads).
    preferred_region: str | None = None
    # After a write, when the commit LSN could not be read, keep that student's reads on the
    # primary for this long instead.
    read_your_writes_fallback_s: float = Field(10.0, ge=0)
    # How long a client's read mark (X-StudyHub-Read-After / cookie) is honoured; never less
    # than twice max_replica_lag_s (see studyhub.api.read_marks).
    read_your_writes_mark_ttl_s: float = Field(300.0, gt=0)

    # uvicorn worker processes (`studyhub serve --workers`); every pool below is per worker.
    workers: int = Field(1, ge=1, le=64)
    # Connection pools (per engine, per worker process), kept open: no overflow, because
    # SQLAlchemy closes overflow connections as soon as they are returned, and under bursts that
    # turned into a connect (SCRAM) per request. Through the pooler, client connections are cheap
    # (PgBouncer multiplexes them onto its own few server connections). A server sees up to
    # workers × pool size connections from the API (plus one probe connection per worker).
    direct_pool_size: int = Field(20, ge=1)
    direct_max_overflow: int = Field(0, ge=0)
    pooler_pool_size: int = Field(40, ge=1)
    pooler_max_overflow: int = Field(0, ge=0)
    # `--pool-size` / STUDYHUB_API_POOL_SIZE: the writer's pool, whichever way it connects
    # (overrides direct_pool_size / pooler_pool_size); the reader's too unless
    # replica_pool_size is set.
    pool_size: int | None = Field(None, ge=1)
    # The reader's pool on the replica (its own max_connections); default: as the writer's.
    replica_pool_size: int | None = Field(None, ge=1)
    pool_timeout_s: float = Field(10.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    command_timeout_s: float = Field(30.0, gt=0)

    token_ttl_s: int = Field(3600, ge=60)
    fsrs_fuzzing: bool = True  # fsrs's own default: spreads review dates a little
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # Concurrent argon2 hashes (each takes ~64 MiB and tens of ms of CPU).
    password_hash_concurrency: int = Field(2, ge=1)

    def writer_pool_size(self, via_pooler: bool) -> int:
        if self.pool_size is not None:
            return self.pool_size
        return self.pooler_pool_size if via_pooler else self.direct_pool_size

    def reader_pool_size(self) -> int:
        if self.replica_pool_size is not None:
            return self.replica_pool_size
        return self.pool_size if self.pool_size is not None else self.direct_pool_size


# ------------------------------------------------------------------ the token secret
SECRET_ENV = "STUDYHUB_API_SECRET"
SECRET_FILE_ENV = "STUDYHUB_API_SECRET_FILE"
LOCAL_SECRET_NAME = "api_token.key"
MIN_SECRET_CHARS = 32


def local_secret_path(profile: Profile) -> Path:
    """Next to the local cluster's 0600 passfile, in its 0700 secrets/ directory."""
    if profile.passfile is not None:
        return profile.passfile.parent / LOCAL_SECRET_NAME
    return LocalCluster().secrets_dir / LOCAL_SECRET_NAME


def _read_private_file(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"token secret file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"token secret file {path} is readable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    return path.read_text().strip()


def load_token_secret(profile: Profile) -> str:
    """The API token's signing secret (see the module doc for where it comes from)."""
    source: str
    if os.environ.get(SECRET_ENV):
        value, source = os.environ[SECRET_ENV].strip(), f"env {SECRET_ENV}"
    elif os.environ.get(SECRET_FILE_ENV):
        path = Path(os.environ[SECRET_FILE_ENV])
        value, source = _read_private_file(path), f"file {path}"
    elif profile.is_local:
        path = local_secret_path(profile)
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, secrets.token_urlsafe(48) + "\n")
        value, source = _read_private_file(path), f"file {path}"
    else:
        raise ConfigError(
            f"no API token secret for profile {profile.name}: set {SECRET_FILE_ENV} to a 0600 "
            f"file holding at least {MIN_SECRET_CHARS} random characters (or {SECRET_ENV})"
        )
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(f"the API token secret from {source} is shorter than "
                          f"{MIN_SECRET_CHARS} characters")
    return value


# ------------------------------------------------------------------ which servers
def used_read_endpoints(profile: Profile, settings: ApiSettings) -> tuple[ReadEndpoint, ...]:
    """The profile's read endpoints the API reads from: all, or those ``read_endpoints``
    names (an unknown name: ConfigError naming the ones there are)."""
    if not settings.read_endpoints:
        return profile.replicas
    names = [n.strip() for n in settings.read_endpoints.split(",") if n.strip()]
    return tuple(profile.read_endpoint(n) for n in names)


@dataclass
class Topology:
    """Which endpoints the API uses (shown by ``studyhub serve`` and ``GET /health``)."""

    profile: str
    writer: str  # "pooler" or "direct"
    replica: bool
    readers: tuple[ReadEndpoint, ...] = ()  # the read endpoints used (when replica)

    def describe(self, profile: Profile) -> dict[str, str | None]:
        w = profile.endpoint("pooler" if self.writer == "pooler" else "app")
        readers = [f"{r.host}:{r.port} ({r.name})" for r in self.readers] if self.replica \
            else []
        return {
            "writer": f"{w.host}:{w.port} ({'PgBouncer' if w.via_pooler else 'primary'})",
            "reader": ", ".join(readers) if readers else "the writer (no replica)",
        }


def choose_topology(profile: Profile, settings: ApiSettings) -> Topology:
    """Resolve the automatic choices; refuse a pooler or replica the profile does not have."""
    has_pooler = profile.pooler_port is not None and (
        profile.is_local or profile.pooler_database is not None
    )
    has_replica = bool(used_read_endpoints(profile, settings))
    use_pooler = has_pooler if settings.use_pooler is None else settings.use_pooler
    use_replica = has_replica if settings.use_replica is None else settings.use_replica
    if use_pooler and not has_pooler:
        profile.endpoint("pooler")  # raises the clear "no connection pooler" error
        raise ConfigError(f"profile {profile.name} has no pooler database (pooler_database)")
    if use_replica and not has_replica:
        profile.endpoint("replica")  # raises "has no read replica (start one with ...)"
    return Topology(profile.name, "pooler" if use_pooler else "direct", use_replica,
                    used_read_endpoints(profile, settings) if use_replica else ())
