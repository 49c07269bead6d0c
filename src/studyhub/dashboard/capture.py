"""The capture loop: while the dashboard runs, every ``capture_every_s`` it stores, for each
profile that resolves, a pg_stat_statements snapshot (``ops.statement_snapshots``, what
``diag slow-queries`` stores on each run) and a size snapshot (``ops.*_size_snapshots``) — the
history behind the query and growth charts (PgHero needs a cron job for this). As the ops role;
a profile that cannot be reached is retried next round, its error shown on its pages. Profiles
marked read-only are not written to."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from studyhub.connect import first_line
from studyhub.dashboard.context import all_profiles, connection
from studyhub.errors import StudyhubError
from studyhub.ops import space, statements
from studyhub.serving import DashboardSettings


@dataclass
class CaptureStatus:
    at: datetime
    notes: list[str] = field(default_factory=list)  # why something was not stored


def capture_profile(view, settings: DashboardSettings) -> CaptureStatus:
    status = CaptureStatus(datetime.now(timezone.utc))
    if view.profile.read_only:
        status.notes.append(f"no history captured: profile {view.name} is marked read-only")
        return status
    try:
        with connection(view, settings) as conn:
            for what, fn in (("statements", statements.capture_snapshot),
                             ("sizes", space.capture_sizes)):
                try:
                    why = fn(conn)
                except StudyhubError as exc:
                    why = f"{what}: {exc}"
                except Exception as exc:  # noqa: BLE001 - one failing capture must not stop the other
                    why = f"{what}: {first_line(exc)}"
                if why:
                    status.notes.append(why)
    except StudyhubError as exc:
        status.notes.append(str(exc))
    return status


class CaptureLoop:
    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.status: dict[str, CaptureStatus] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def capture_all(self) -> None:
        for view in all_profiles(self.settings):
            if view.ok:
                self.status[view.name] = capture_profile(view, self.settings)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.capture_all()
            self._stop.wait(self.settings.capture_every_s)

    def start(self) -> None:
        if self.settings.capture_every_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="dashboard-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
