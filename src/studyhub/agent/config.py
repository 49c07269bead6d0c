"""The ``[agent]`` table of studyhub.toml: the agent's name, the profiles it watches, its jobs
and their schedules (cron syntax read by croniter, or ``every_s``), and the history, alerts and
metrics settings. Public values and file paths only: a key that looks like a secret is refused
(the same rule as the profiles' tables), as is a key nobody reads (a typo must not silently
turn a job off). Every problem is one ``ConfigError`` line naming the key."""

from __future__ import annotations

import os
import socket
import tomllib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from studyhub.agent.metrics import MetricsSettings
from studyhub.errors import ConfigError
from studyhub.ops.alerts.settings import AlertSettings
from studyhub.ops.history.settings import HistorySettings
from studyhub.paths import studyhub_home
from studyhub.profiles import _SECRET_KEY_RE, PROFILE_NAMES

# job kinds → does the kind write (audited, run in a child process) or only read/sample
KINDS: dict[str, bool] = {
    "doctor": False, "sample": False, "prune_history": False, "capture": False,
    "backup": True, "prune": True, "basebackup": True, "drill": True,
}
# default timeouts per kind (seconds)
DEFAULT_TIMEOUT_S: dict[str, float] = {
    "doctor": 60, "sample": 30, "prune_history": 300, "capture": 120,
    "backup": 6 * 3600, "prune": 1800, "basebackup": 6 * 3600, "drill": 6 * 3600,
}
# keys that name where a secret is, not the secret: allowed although they match the rule
_SECRET_HOLDERS = ("_file", "_env", "_section")


class JobConfig(BaseModel):
    """``[agent.jobs.<name>]``: one job. The name is its kind unless ``kind`` says otherwise
    (two backups to two targets: ``[agent.jobs.backup_s3] kind = "backup"``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = ""  # default: the job's name
    schedule: str | None = None  # cron: "m h dom mon dow" in the host's time zone
    every_s: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=0, ge=0)  # 0: the kind's default
    enabled: bool = True
    target: str | None = None  # backup/prune/drill: default the profile's configured target
    keep_daily: int = Field(default=7, ge=0)  # prune
    keep_weekly: int = Field(default=4, ge=0)
    keep_monthly: int = Field(default=6, ge=0)
    keep: int | None = Field(default=None, ge=1)  # basebackup: keep this many
    parallel: int = Field(default=2, ge=1, le=32)  # backup/drill: connections at once
    format: str = "native"  # backup: native | sql

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r} (e.g. \"0 3 * * *\")")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> "JobConfig":
        if self.schedule is not None and self.every_s is not None:
            raise ValueError("give schedule or every_s, not both")
        return self

    @property
    def writes(self) -> bool:
        return KINDS.get(self.kind, False)

    @property
    def effective_timeout_s(self) -> float:
        return self.timeout_s or DEFAULT_TIMEOUT_S.get(self.kind, 300)


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default_factory=socket.gethostname, min_length=1)
    profiles: list[str] = ["local"]
    heartbeat_every_s: float = Field(default=15, gt=0)
    stop_grace_s: float = Field(default=30, ge=0)  # on SIGTERM: running jobs may finish this long
    reconnect_max_s: float = Field(default=60, gt=0)  # backoff cap for an unreachable profile
    state_dir: str | None = None  # default $STUDYHUB_HOME/agent
    jobs: dict[str, JobConfig] = {}
    history: HistorySettings = HistorySettings()
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in PROFILE_NAMES]
        if unknown:
            raise ValueError(f"unknown profile(s) {', '.join(unknown)}; choose from "
                             + ", ".join(PROFILE_NAMES))
        return value

    @model_validator(mode="after")
    def _complete_jobs(self) -> "AgentConfig":
        """Fill in the default jobs and each job's kind; a writing job needs a schedule."""
        defaults = {
            "doctor": JobConfig(kind="doctor", every_s=60),
            "sample": JobConfig(kind="sample", every_s=self.history.sample_every_s),
            "prune_history": JobConfig(kind="prune_history", every_s=3600),
            "capture": JobConfig(kind="capture", every_s=300),
        }
        jobs: dict[str, JobConfig] = {}
        for name, job in self.jobs.items():
            kind = job.kind or name
            if kind not in KINDS:
                raise ValueError(f"jobs.{name}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
            given = job.model_dump(exclude_unset=True)
            base = defaults.get(name)
            if base is not None and "schedule" not in given and "every_s" not in given:
                given["every_s"] = base.every_s
            job = JobConfig(**{**given, "kind": kind})
            if job.enabled and job.schedule is None and job.every_s is None:
                raise ValueError(f"jobs.{name}: needs a schedule (cron) or every_s")
            jobs[name] = job
        for name, job in defaults.items():
            jobs.setdefault(name, job)
        self.jobs = jobs
        return self

    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else studyhub_home() / "agent"


def config_file() -> Path:
    """The same file the profiles are read from: ``$STUDYHUB_CONFIG`` or ./studyhub.toml."""
    raw = os.environ.get("STUDYHUB_CONFIG")
    return Path(raw) if raw else Path.cwd() / "studyhub.toml"


def _refuse_secrets(data: Any, where: str) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            name = str(key)
            if _SECRET_KEY_RE.fullmatch(name) and not name.endswith(_SECRET_HOLDERS):
                raise ConfigError(
                    f"[{where}] {name}: secrets never go in studyhub.toml; use the environment "
                    "or a 0600 file (a *_file or *_env key)")
            _refuse_secrets(value, f"{where}.{name}")
    elif isinstance(data, list):
        for item in data:
            _refuse_secrets(item, where)


def parse_agent_config(table: dict[str, Any]) -> AgentConfig:
    """An ``[agent]`` table (already parsed TOML) as an AgentConfig, or one ConfigError line."""
    _refuse_secrets(table, "agent")
    try:
        return AgentConfig(**table)
    except ValidationError as exc:
        # Locations and messages only: pydantic's own text echoes the input.
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"[agent] {loc + ': ' if loc else ''}{msg}{more}") from None


def load_agent_config(path: Path | None = None) -> AgentConfig:
    """The ``[agent]`` table of ``path`` (default: ``config_file()``); defaults when the file or
    the table is absent."""
    path = path or config_file()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if path == config_file() and "STUDYHUB_CONFIG" not in os.environ:
            return parse_agent_config({})
        raise ConfigError(f"agent configuration {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: line {exc.lineno}") from None
    table = data.get("agent", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [agent] must be a table")
    return parse_agent_config(table)


def next_run(job: JobConfig, after: datetime) -> datetime:
    """When ``job`` is next due after ``after`` (aware): cron in the host's time zone, else
    ``after + every_s``. Aware UTC."""
    if job.schedule is not None:
        local = after.astimezone()
        return croniter(job.schedule, local).get_next(datetime).astimezone(timezone.utc)
    assert job.every_s is not None
    return (after + timedelta(seconds=job.every_s)).astimezone(timezone.utc)


def due_now(job: JobConfig, now: datetime) -> bool:
    """For ``agent run --once``: every ``every_s`` job is due; a cron job when ``now``'s
    minute matches its schedule."""
    if job.schedule is None:
        return True
    return bool(croniter.match(job.schedule, now.astimezone()))
