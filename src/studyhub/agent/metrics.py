"""The agent's Prometheus endpoint: what the agent learns from its jobs (doctor reports, history
samples, job outcomes) as gauges, counters and a histogram on its own ``CollectorRegistry``,
served over HTTP on loopback by default; ``Authorization: Bearer <token>`` is required when a
token is configured, and a token is required to listen anywhere else (as the dashboard).

Metric names and an example scrape configuration: docs/agent-alerts.md.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from studyhub.errors import ConfigError
from studyhub.ops.alerts.engine import check_number
from studyhub.ops.alerts.settings import read_private_line
from studyhub.ops.health import EXIT_CODES, DoctorReport
from studyhub.serving import is_loopback

__all__ = ["DEFAULT_PORT", "MIN_TOKEN_CHARS", "AgentMetrics", "MetricsServer",
           "MetricsSettings", "serve"]

log = logging.getLogger("studyhub.agent.metrics")

DEFAULT_PORT = 9187
MIN_TOKEN_CHARS = 16
_SECRET_KEY_RE = re.compile(r"(?i).*(secret|password|token|access_key|key_id|private).*")
JOB_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200)


class MetricsSettings(BaseModel):
    """``[agent.metrics]``: off unless enabled; loopback by default; a token (a 0600 file) is
    required when ``host`` is not a loopback address."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)  # 0: any free port
    token_file: str | None = None  # first line: the bearer token (≥16 characters), mode 0600

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key != "token_file" and _SECRET_KEY_RE.fullmatch(str(key)):
                    raise ValueError(f"{key}: secrets never go in studyhub.toml; "
                                     "use token_file (a 0600 file)")
        return data

    @model_validator(mode="after")
    def _token_when_exposed(self) -> "MetricsSettings":
        if not is_loopback(self.host) and not self.token_file:
            raise ValueError(f"refusing to serve metrics on {self.host} without a token: set "
                             "token_file (a 0600 file), or listen on 127.0.0.1")
        return self

    def token(self) -> SecretStr | None:
        if not self.token_file:
            return None
        value = read_private_line(Path(self.token_file), "metrics token")
        if len(value) < MIN_TOKEN_CHARS:
            raise ConfigError(f"the metrics token in {self.token_file} is shorter than "
                              f"{MIN_TOKEN_CHARS} characters")
        return SecretStr(value)


def _iso_ts(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class AgentMetrics:
    """The agent's metrics on a registry of their own (nothing of the process's default
    registry leaks in). ``record(outcome)`` takes every JobOutcome; thread-safe."""

    def __init__(self, agent: str, clock: Callable[[], float] = time.time) -> None:
        self.agent = agent
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[tuple[int, str], set[tuple[str, ...]]] = {}
        self._sampled: set[str] = set()
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.up = Gauge("studyhub_agent_up", "1 while the agent runs", ["agent"], registry=r)
        self.started = Gauge("studyhub_agent_start_time_seconds",
                             "When the agent started (Unix time)", ["agent"], registry=r)
        self.heartbeat = Gauge("studyhub_agent_heartbeat_timestamp_seconds",
                               "When the agent last finished a job (Unix time)", ["agent"],
                               registry=r)
        self.check_status = Gauge("studyhub_check_status",
                                  "Doctor check state: 0 ok, 1 warn, 2 critical",
                                  ["profile", "check"], registry=r)
        self.check_value = Gauge("studyhub_check_value",
                                 "Doctor check value, where it is a number or a count",
                                 ["profile", "check"], registry=r)
        self.doctor_status = Gauge("studyhub_doctor_status",
                                   "Worst doctor check state: 0 ok, 1 warn, 2 critical",
                                   ["profile"], registry=r)
        self.doctor_time = Gauge("studyhub_doctor_last_run_timestamp_seconds",
                                 "When the doctor last reported (Unix time)", ["profile"],
                                 registry=r)
        self.sessions = Gauge("studyhub_sessions", "Client sessions by state",
                              ["profile", "state"], registry=r)
        self.waiting = Gauge("studyhub_sessions_waiting", "Sessions waiting for a lock",
                             ["profile"], registry=r)
        self.longest_tx = Gauge("studyhub_longest_transaction_seconds",
                                "Age of the oldest open transaction (0: none)", ["profile"],
                                registry=r)
        self.lag_s = Gauge("studyhub_replication_lag_seconds", "Replay lag of each replica",
                           ["profile", "replica"], registry=r)
        self.lag_bytes = Gauge("studyhub_replication_lag_bytes", "Replay lag of each replica",
                               ["profile", "replica"], registry=r)
        self.backup_age = Gauge("studyhub_backup_age_seconds",
                                "Age of the newest complete backup set per target "
                                "(+Inf: none)", ["profile", "target"], registry=r)
        self.drill_age = Gauge("studyhub_restore_drill_age_seconds",
                               "Age of the last successful restore drill (+Inf: none)",
                               ["profile"], registry=r)
        self.job_duration = Histogram("studyhub_agent_job_duration_seconds",
                                      "Duration of the agent's job runs", ["profile", "job"],
                                      buckets=JOB_BUCKETS_S, registry=r)
        self.job_last_duration = Gauge("studyhub_agent_job_last_duration_seconds",
                                       "Duration of the job's last run", ["profile", "job"],
                                       registry=r)
        self.jobs = Counter("studyhub_agent_jobs", "Job runs by outcome "
                            "(ok, failed, timeout, cancelled, missed)",
                            ["profile", "job", "outcome"], registry=r)
        self.job_success = Gauge("studyhub_agent_job_last_success_timestamp_seconds",
                                 "When the job last succeeded (Unix time)", ["profile", "job"],
                                 registry=r)
        now = self._clock()
        self.up.labels(agent).set(1)
        self.started.labels(agent).set(now)
        self.heartbeat.labels(agent).set(now)

    # ------------------------------------------------------------------ updates
    def _replace(self, gauge: Gauge, profile: str, values: dict[tuple[str, ...], Any]) -> None:
        """Set ``gauge``'s series of ``profile`` to exactly ``values`` (labels after the
        profile → a number or a zero-argument function evaluated at scrape time)."""
        key = (id(gauge), profile)
        old = self._series.get(key, set())
        for labels in old - set(values):
            try:
                gauge.remove(profile, *labels)
            except KeyError:
                pass
        for labels, v in values.items():
            child = gauge.labels(profile, *labels)
            if callable(v):
                child.set_function(v)
            else:
                child.set(v)
        self._series[key] = set(values)

    def _age(self, ts: float | None) -> Any:
        if ts is None:
            return float("inf")
        return lambda: max(0.0, self._clock() - ts)

    def record(self, outcome: Any) -> None:
        """One finished job (the agent's JobOutcome): job metrics, and what its result says."""
        with self._lock:
            now = self._clock()
            self.heartbeat.labels(self.agent).set(now)
            if outcome.kind == "heartbeat":
                return
            p, job = outcome.profile, outcome.job
            self.jobs.labels(p, job, outcome.outcome).inc()
            if outcome.outcome in ("ok", "failed", "timeout"):
                self.job_duration.labels(p, job).observe(outcome.duration_s)
                self.job_last_duration.labels(p, job).set(outcome.duration_s)
            if outcome.outcome == "ok":
                self.job_success.labels(p, job).set(now)
            result = outcome.result
            if isinstance(result, DoctorReport):
                self._doctor(p, result, now)
            elif outcome.kind == "sample" and result is not None:
                self._sample(p, result)

    def _doctor(self, p: str, report: DoctorReport, now: float) -> None:
        self.doctor_status.labels(p).set(EXIT_CODES[report.status])
        self.doctor_time.labels(p).set(now)
        status, values = {}, {}
        by_name = {c.name: c for c in report.checks}
        for c in report.checks:
            status[(c.name,)] = EXIT_CODES.get(c.status, 2)
            number = check_number(c.value)
            if number is not None:
                values[(c.name,)] = number
        self._replace(self.check_status, p, status)
        self._replace(self.check_value, p, values)

        lag = by_name.get("replication_lag")
        if lag is not None:
            items = [i for i in lag.items if isinstance(i, dict) and i.get("name")]
            self._replace(self.lag_s, p, {(str(i["name"]),): float(i.get("replay_lag_s") or 0)
                                          for i in items})
            self._replace(self.lag_bytes, p, {
                (str(i["name"]),): float(i.get("replay_lag_bytes") or 0) for i in items})
        backups = by_name.get("backup_age")
        if backups is not None:
            self._replace(self.backup_age, p, {
                (str(i["target"]),): self._age(_iso_ts(i.get("created_at")))
                for i in backups.items if isinstance(i, dict) and i.get("target")})
        drill = by_name.get("restore_drill")
        if drill is not None:
            items = [i for i in drill.items if isinstance(i, dict)]
            ok_times = [t for i in items if i.get("ok") and (t := _iso_ts(i.get("drilled_at")))]
            self._replace(self.drill_age, p, {(): self._age(max(ok_times))} if ok_times
                          else {(): float("inf")} if items else {})
        conns = by_name.get("connections")
        if conns is not None and p not in self._sampled:
            # until history sampling reports sessions for this profile, the doctor's count
            self._replace(self.sessions, p, {
                (str(i["state"]),): float(i.get("count") or 0)
                for i in conns.items if isinstance(i, dict) and "state" in i})

    def _sample(self, p: str, result: Any) -> None:
        by_state = getattr(result, "by_state", None)
        if isinstance(by_state, dict):
            self._sampled.add(p)
            self._replace(self.sessions, p, {(str(k),): float(v) for k, v in by_state.items()})
        waiting = getattr(result, "waiting", None)
        if isinstance(waiting, (int, float)):
            self.waiting.labels(p).set(waiting)
        if hasattr(result, "longest_transaction_s"):
            self.longest_tx.labels(p).set(float(result.longest_transaction_s or 0))

    def close(self) -> None:
        self.up.labels(self.agent).set(0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# ------------------------------------------------------------------ the HTTP endpoint

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """A running endpoint: ``.port`` (the bound port), ``.stop()``."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd, self._thread = httpd, thread
        self.host = httpd.server_address[0]
        self.port = int(httpd.server_address[1])

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _handler(registry: CollectorRegistry, token: str | None) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "studyhub-agent"
        sys_version = ""

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if expected is not None:
                given = (self.headers.get("Authorization") or "").encode()
                if not hmac.compare_digest(given, expected):
                    self._send(401, b"a bearer token is required\n",
                               extra={"WWW-Authenticate": 'Bearer realm="studyhub-agent"'})
                    return
            if self.path.split("?", 1)[0] != "/metrics":
                self._send(404, b"see /metrics\n")
                return
            self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("metrics: %s %s", self.address_string(), format % args)

    return Handler


def serve(settings: MetricsSettings, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` at ``http://HOST:PORT/metrics`` on a thread of its own."""
    token = settings.token()
    if token is None and not is_loopback(settings.host):
        raise ConfigError(f"refusing to serve metrics on {settings.host} without a token")
    host = settings.host.strip("[]")
    try:
        v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        v6 = False
    cls = _Server6 if v6 else _Server
    try:
        httpd = cls((host, settings.port), _handler(registry, token.get_secret_value()
                                                    if token else None))
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {settings.host}:{settings.port}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    thread = threading.Thread(target=httpd.serve_forever, name="studyhub-metrics",
                              daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
