"""Index builds started from the dashboard: ``indexes.build_index`` (the path ``studyhub diag
create-index`` takes: the profile's rule, CREATE INDEX CONCURRENTLY with lock_timeout, retries
and clean-up of invalid leftovers, one audit line however it ends) in a background thread, with
its progress (pg_stat_progress_create_index) kept for the job page."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from studyhub.connect import first_line
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops import indexes
from studyhub.profiles import Profile

APP_NAME = "studyhub dashboard create-index"


@dataclass
class IndexJob:
    id: str
    profile: str
    table: str
    columns: list[str]
    index: str
    statement: str
    client: str | None
    state: str = "running"  # running | done | failed
    phase: str = "starting"
    fraction: float | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished_at: datetime | None = None
    result: indexes.IndexBuildResult | None = None
    error: str | None = None
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def elapsed_s(self) -> float:
        if self.finished_at is not None:
            return (self.finished_at - self.started_at).total_seconds()
        return time.monotonic() - self._started

    @property
    def percent(self) -> int | None:
        return None if self.fraction is None else int(round(self.fraction * 100))


class IndexJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, IndexJob] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str) -> IndexJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def recent(self, profile: str, limit: int = 10) -> list[IndexJob]:
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.profile == profile]
        return sorted(jobs, key=lambda j: j.started_at, reverse=True)[:limit]

    def start(self, prof: Profile, plan: indexes.IndexPlan, client: str | None,
              database: str | None = None) -> IndexJob:
        """Build ``plan`` (``indexes.plan_index``, made when the request came in) in the
        background; refused while a build of the same index runs on this profile."""
        with self._lock:
            for j in self._jobs.values():
                if j.profile == prof.name and j.index == plan.index and j.state == "running":
                    raise RefusedError(f"index {plan.index} is already being built (job "
                                       f"{j.id}); nothing was started")
            job = IndexJob(secrets.token_hex(6), prof.name, plan.target, list(plan.columns),
                           plan.index, plan.statement, client)
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, prof, plan, database),
                         name=f"index-build-{job.id}", daemon=True).start()
        return job

    def _run(self, job: IndexJob, prof: Profile, plan: indexes.IndexPlan,
             database: str | None) -> None:
        def on_progress(p: indexes.BuildProgress) -> None:
            job.phase, job.fraction = p.phase, p.fraction

        try:
            job.phase = "building"
            result = indexes.build_index(
                prof, plan.table_sql, plan.columns, name=plan.index, database=database,
                progress=on_progress, application_name=APP_NAME,
                audit={"via": "dashboard", "client": job.client})
            job.result, job.state, job.phase, job.fraction = result, "done", "done", 1.0
        except StudyhubError as exc:
            job.state, job.phase, job.error = "failed", "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - shown on the job page, never lost
            job.state, job.phase, job.error = "failed", "failed", first_line(exc)
        finally:
            job.finished_at = datetime.now(timezone.utc)
