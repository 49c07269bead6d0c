"""The API's settings: which profile, whether to use the pooler and the replica, the lag bound.

Values come from the ``studyhub serve`` options or the environment (``STUDYHUB_API_*``, e.g.
``STUDYHUB_API_MAX_REPLICA_LAG_S=2``). The token secret is *not* a setting: it comes from
``STUDYHUB_API_SECRET``, a 0600 file (``STUDYHUB_API_SECRET_FILE``) or, for the local profile,
``$STUDYHUB_HOME/secrets/api_token.key`` (see :mod:`studyhub.api.auth`).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STUDYHUB_API_", extra="ignore")

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
