"""What the agent does with every finished job besides recording it: alerts and metrics.

``build_hooks(config, state_dir)`` returns the hooks the configuration asks for:

- ``AlertHook`` (when ``[agent.alerts]`` has a webhook or e-mail): doctor reports become one
  signal per check, the scheduled jobs (backup, prune, base backup, drill, the doctor run
  itself, …) one signal each; the ``AlertEngine`` (state in ``STATE_DIR/alerts.json``) turns
  them into alerts, which are delivered. All of it happens on the hook's own thread, which
  also ticks the engine for repeats and for flapping keys that have settled: ``job_finished``
  only queues and returns.
- ``MetricsHook`` (when ``[agent.metrics] enabled``): ``AgentMetrics`` updated from every
  outcome, served on its own thread.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from studyhub.agent.config import AgentConfig
from studyhub.agent.events import AgentHooks, JobOutcome
from studyhub.agent.metrics import AgentMetrics, MetricsServer, MetricsSettings, serve
from studyhub.ops.alerts import (
    Alert,
    AlertEngine,
    AlertSettings,
    Delivery,
    Signal,
    deliver,
    signal_from_job,
    signals_from_doctor,
)
from studyhub.ops.health import DoctorReport

__all__ = ["ALERT_STATE_FILE", "AlertHook", "MetricsHook", "build_hooks", "signals_for"]

log = logging.getLogger("studyhub.agent.alerts")

ALERT_STATE_FILE = "alerts.json"
_STOP = object()


def signals_for(outcome: JobOutcome) -> list[Signal]:
    """The signals one finished job gives: the doctor's checks (when it produced a report)
    and the job's own outcome."""
    out = []
    if isinstance(outcome.result, DoctorReport):
        out.extend(signals_from_doctor(outcome.result))
    job = signal_from_job(outcome)
    if job is not None:
        out.append(job)
    return out


class AlertHook:
    """Feeds the alert engine and delivers, on a thread of its own (see the module doc)."""

    def __init__(self, settings: AlertSettings, state_file: Path, *,
                 tick_every_s: float = 30.0,
                 send: Callable[[list[Alert], AlertSettings], list[Delivery]] = deliver,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        settings.check_secrets()  # a missing URL/password: one line at start, not at 3 a.m.
        self.settings = settings
        self.engine = AlertEngine(settings, state_file)
        self.deliveries: list[Delivery] = []  # the latest ones (a bounded tail)
        self._send, self._clock, self._tick_every_s = send, clock, tick_every_s
        self._queue: queue.Queue[Any] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="studyhub-alerts", daemon=True)
        self._thread.start()

    def job_finished(self, outcome: JobOutcome) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(outcome)

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until every queued outcome has been observed and delivered."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def close(self, timeout_s: float = 60.0) -> None:
        """Deliver what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            log.warning("alerts: still delivering after %.0fs at shutdown; giving up",
                        timeout_s)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._tick_every_s)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            try:
                alerts = []
                if item is not None:
                    alerts = self.engine.observe(signals_for(item), self._clock())
                else:
                    alerts = self.engine.tick(self._clock())
                if alerts:
                    self.deliveries = (self.deliveries + self._send(alerts, self.settings))[-50:]
            except Exception:  # keep watching whatever one batch did; no secret in a traceback
                log.exception("alerts: a batch could not be handled")
            finally:
                if item is not None:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()


class MetricsHook:
    """``AgentMetrics`` fed by every outcome, served while the agent runs."""

    def __init__(self, settings: MetricsSettings, agent: str, *, start: bool = True) -> None:
        self.settings = settings
        self.metrics = AgentMetrics(agent)
        self.server: MetricsServer | None = serve(settings, self.metrics.registry) \
            if start else None
        if self.server is not None:
            log.info("metrics: serving http://%s:%d/metrics", settings.host, self.server.port)

    def job_finished(self, outcome: JobOutcome) -> None:
        try:
            self.metrics.record(outcome)
        except Exception:
            log.exception("metrics: could not record %s", outcome.job)

    def close(self) -> None:
        self.metrics.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


def build_hooks(config: AgentConfig, state_dir: Path) -> list[AgentHooks]:
    """The alert hook when a channel is configured, the metrics hook when metrics are
    enabled (ConfigError, one line, for a missing secret or a port in use)."""
    hooks: list[AgentHooks] = []
    if config.alerts.has_channels:
        state_dir = Path(state_dir)
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        hooks.append(AlertHook(config.alerts, state_dir / ALERT_STATE_FILE))
    if config.metrics.enabled:
        try:
            hooks.append(MetricsHook(config.metrics, config.name))
        except BaseException:
            for h in hooks:
                h.close()
            raise
    return hooks
