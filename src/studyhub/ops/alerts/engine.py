"""The alert engine: signals in (one per key and observation: a doctor check of a profile, a
scheduled job), alerts out — what to tell people, deduplicated.

Per key (e.g. ``local:replication_lag``, ``production:job:backup``):

- a change of state (ok → warn → critical and back) is one alert; the same state observed again
  is nothing, until ``repeat_every_s`` has passed since the last message: then it is repeated
  (by ``observe`` or ``tick``) for as long as the problem lasts;
- going back to ok (``resolve_after`` ok observations in a row) is one ``resolved`` alert;
- a key whose observed state changed more than ``flap_max_changes`` times within
  ``flap_window_s`` is *flapping*: one ``flapping`` alert, then silence (no changes, no repeats)
  until it has kept one state for ``flap_window_s``; then one final alert: its state, or
  ``resolved`` when it settled on ok.

The state is kept in a JSON file (written atomically after every change), so a restarted agent
neither re-sends what it already sent nor forgets a problem it has to resolve. Time is passed
in (``now``) so that the rules can be driven exactly.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Protocol

from studyhub.atomic_file import write_json_atomically
from studyhub.ops.alerts.settings import AlertSettings

__all__ = ["ALERT_KINDS", "JOB_KINDS_CRITICAL", "STATUSES", "Alert", "AlertEngine", "Signal",
           "check_number", "signal_from_job", "signals_from_doctor"]

log = logging.getLogger("studyhub.ops.alerts")

STATUSES = ("ok", "warn", "critical")
# firing: ok → warn/critical; changed: warn ↔ critical; repeat: still the same problem;
# resolved: back to ok; flapping: changing too often, silent until stable
ALERT_KINDS = ("firing", "changed", "repeat", "resolved", "flapping")
STATE_VERSION = 1


@dataclass(frozen=True)
class Signal:
    """One observation of one key. ``value``: the measured value as shown (text or number)."""

    key: str
    status: str  # ok | warn | critical
    title: str
    detail: str | None = None
    value: str | float | None = None
    source: str = "doctor"  # doctor | job | ...

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; one of {', '.join(STATUSES)}")


@dataclass(frozen=True)
class Alert:
    """One thing to tell people about one key."""

    key: str
    kind: str  # see ALERT_KINDS
    status: str  # the key's state now (for "flapping": the latest observed)
    previous: str  # the state last told ("flapping" for the message that ends flapping)
    title: str
    detail: str | None
    value: str | float | None
    source: str
    at: datetime
    since: datetime | None  # when the problem began (None when there is none)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat(timespec="seconds")
        d["since"] = self.since.isoformat(timespec="seconds") if self.since else None
        return d


@dataclass
class _KeyState:
    told: str = "ok"  # the state last told (ok: nothing open)
    observed: str = "ok"  # the state last observed
    ok_streak: int = 0
    changes: list[float] = field(default_factory=list)  # when `observed` changed, in window
    last_change: float | None = None
    flapping: bool = False
    last_sent: float | None = None
    since: float | None = None  # the open problem's start
    title: str = ""
    detail: str | None = None
    value: str | float | None = None
    source: str = ""


def _ts(now: datetime | None) -> float:
    when = now or datetime.now(timezone.utc)
    if when.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return when.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


class AlertEngine:
    """Dedupe, repeat, resolve and flap damping over keyed signals (see the module doc).
    Thread-safe; ``state_file`` None keeps the state in memory only."""

    def __init__(self, settings: AlertSettings, state_file: Path | None) -> None:
        self.settings = settings
        self.state_file = Path(state_file) if state_file else None
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = self._load()

    # -------------------------------------------------------------- persistence
    def _load(self) -> dict[str, _KeyState]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            raw = json.loads(self.state_file.read_text())
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"version {raw.get('version')!r}")
            return {k: _KeyState(**v) for k, v in raw["keys"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # Starting empty re-sends what is still wrong: better twice than never.
            log.warning("alert state %s unreadable (%s); starting afresh", self.state_file,
                        type(exc).__name__)
            return {}

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {"version": STATE_VERSION,
                "keys": {k: asdict(v) for k, v in sorted(self._keys.items())}}
        write_json_atomically(self.state_file, data, overwrite=True)

    # -------------------------------------------------------------- the rules
    def observe(self, signals: Iterable[Signal], now: datetime | None = None) -> list[Alert]:
        """Feed one observation per key; returns the alerts to send now (repeats due for
        other keys included)."""
        t = _ts(now)
        out: list[Alert] = []
        with self._lock:
            seen = set()
            for sig in signals:
                if sig.key in seen:
                    continue  # one observation per key and call: the first wins
                seen.add(sig.key)
                out.extend(self._observe_one(sig, t))
            out.extend(self._due(t, skip=seen))
            self._save()
        return out

    def tick(self, now: datetime | None = None) -> list[Alert]:
        """Time passes: repeats that are due, flapping keys that have become stable."""
        t = _ts(now)
        with self._lock:
            out = self._due(t, skip=set())
            if out:
                self._save()
        return out

    def open_problems(self) -> dict[str, str]:
        """Keys with a told state other than ok (or flapping): key → state."""
        with self._lock:
            return {k: ("flapping" if s.flapping else s.told) for k, s in self._keys.items()
                    if s.flapping or s.told != "ok"}

    def _alert(self, key: str, st: _KeyState, kind: str, status: str, previous: str,
               t: float) -> Alert:
        st.last_sent = t
        return Alert(key, kind, status, previous, st.title, st.detail, st.value, st.source,
                     _dt(t) or datetime.now(timezone.utc), _dt(st.since))

    def _observe_one(self, sig: Signal, t: float) -> list[Alert]:
        st = self._keys.get(sig.key)
        if st is None:
            if sig.status == "ok":
                return []  # a new key that is fine: nothing to remember
            st = self._keys[sig.key] = _KeyState()
        st.title, st.detail, st.value, st.source = sig.title, sig.detail, sig.value, sig.source
        window = self.settings.flap_window_s
        if sig.status != st.observed:
            st.changes.append(t)
            st.last_change = t
        st.changes = [c for c in st.changes if c > t - window]
        if sig.status == "ok" and st.told == "ok" and not st.flapping and not st.changes:
            del self._keys[sig.key]  # fine, nothing open, no recent changes: forget it
            return []
        st.observed = sig.status
        st.ok_streak = st.ok_streak + 1 if sig.status == "ok" else 0

        if st.flapping:
            return self._settle(sig.key, st, t)
        if len(st.changes) > self.settings.flap_max_changes:
            st.flapping = True
            return [self._alert(sig.key, st, "flapping", sig.status, st.told, t)]
        return self._follow(sig.key, st, t)

    def _effective(self, st: _KeyState) -> str:
        if st.observed == "ok" and st.told != "ok" and st.ok_streak < self.settings.resolve_after:
            return st.told  # not resolved yet: wait for more ok observations
        return st.observed

    def _follow(self, key: str, st: _KeyState, t: float) -> list[Alert]:
        """Not flapping: tell a change of state, or repeat a lasting problem when due."""
        now_state, told = self._effective(st), st.told
        if now_state != told:
            st.told = now_state
            if now_state == "ok":
                alert = self._alert(key, st, "resolved", "ok", told, t)
                st.since = None
                self._forget_if_quiet(key, st)
                return [alert]
            if told == "ok":
                st.since = t
            return [self._alert(key, st, "firing" if told == "ok" else "changed", now_state,
                                told, t)]
        if told != "ok" and st.last_sent is not None \
                and t - st.last_sent >= self.settings.repeat_every_s:
            return [self._alert(key, st, "repeat", told, told, t)]
        return []

    def _settle(self, key: str, st: _KeyState, t: float) -> list[Alert]:
        """Flapping: silent until one state has held for the whole window; then one final
        message: the state it settled on (``previous`` = "flapping"), or resolved."""
        if st.last_change is not None and t - st.last_change < self.settings.flap_window_s:
            return []
        st.flapping = False
        st.changes = []
        final, told = st.observed, st.told
        st.told = final
        if final == "ok":
            alert = self._alert(key, st, "resolved", "ok", "flapping", t)
            st.since = None
            self._forget_if_quiet(key, st)
            return [alert]
        if told == "ok" or st.since is None:
            st.since = st.last_change or t
        return [self._alert(key, st, "firing", final, "flapping", t)]

    def _due(self, t: float, skip: set[str]) -> list[Alert]:
        out = []
        for key, st in list(self._keys.items()):
            if key in skip:
                continue
            if st.flapping:
                out.extend(self._settle(key, st, t))
            elif st.told != "ok" and st.last_sent is not None \
                    and t - st.last_sent >= self.settings.repeat_every_s:
                out.append(self._alert(key, st, "repeat", st.told, st.told, t))
        return out

    def _forget_if_quiet(self, key: str, st: _KeyState) -> None:
        # keep the key while its recent changes still count towards flapping
        if not st.changes:
            self._keys.pop(key, None)


# ------------------------------------------------------------------ signals from results

_COUNT_RE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(?:$|[(/%])")


def check_number(value: Any) -> float | None:
    """A doctor check's value as a number: the value itself when numeric, else the count it
    starts with when it is written as one ("3", "2 (oldest 5min)", "12/97 (12%)" → 12);
    None for anything else ("42min", "no replicas", "1.5 GB")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _COUNT_RE.match(value)
        if m:
            return float(m.group(1))
    return None


def signals_from_doctor(report: Any) -> list[Signal]:
    """One signal per check of a ``DoctorReport``, keyed ``profile:check``."""
    out = []
    for c in report.checks:
        detail = c.detail
        if c.status != "ok" and c.fix:
            detail = f"{detail}. Fix: {c.fix}" if detail else f"Fix: {c.fix}"
        value = c.value if isinstance(c.value, (str, int, float)) else str(c.value)
        out.append(Signal(f"{report.profile}:{c.name}", c.status, f"{report.profile}: {c.title}",
                          detail, value, "doctor"))
    return out


class _Outcome(Protocol):
    """What ``signal_from_job`` reads of the agent's ``JobOutcome`` (ops does not import the
    agent layer above it)."""

    profile: str
    job: str
    kind: str
    outcome: str
    error: str | None


# jobs whose failure is critical: data protection (backups, retention, drills) and the doctor
# (a doctor that cannot run means nobody is watching: usually the database is unreachable)
JOB_KINDS_CRITICAL = ("backup", "prune", "basebackup", "drill", "doctor")
_JOB_TITLES = {"backup": "backup", "prune": "backup prune", "basebackup": "base backup",
               "drill": "restore drill", "doctor": "doctor run", "sample": "history sampling",
               "capture": "statement/size capture", "prune_history": "history pruning"}


def signal_from_job(outcome: _Outcome) -> Signal | None:
    """A scheduled job's outcome as a signal keyed ``profile:job:NAME``: failed or timed out
    → critical for backups, prune, base backups, drills and the doctor itself, warn for the
    others; ok → ok (which resolves an earlier failure). Cancelled (shutdown) and missed runs
    (logged by the agent) are no signal. The internal heartbeat is none either."""
    if outcome.kind == "heartbeat" or outcome.outcome not in ("ok", "failed", "timeout"):
        return None
    what = _JOB_TITLES.get(outcome.kind, outcome.kind)
    title = f"{outcome.profile}: {what} ({outcome.job})"
    if outcome.outcome == "ok":
        return Signal(f"{outcome.profile}:job:{outcome.job}", "ok", title, None, "ok", "job")
    status = "critical" if outcome.kind in JOB_KINDS_CRITICAL else "warn"
    verb = "timed out" if outcome.outcome == "timeout" else "failed"
    detail = f"{what} {verb}" + (f": {outcome.error}" if outcome.error else "")
    return Signal(f"{outcome.profile}:job:{outcome.job}", status, title, detail,
                  outcome.outcome, "job")
