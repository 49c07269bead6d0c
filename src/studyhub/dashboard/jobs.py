"""Index builds started from the dashboard: ``indexes.create_index`` (CREATE INDEX CONCURRENTLY
with lock_timeout, retries and clean-up of invalid leftovers) in a background thread, with its
progress (pg_stat_progress_create_index) kept for the job page. Audited like
``studyhub diag create-index`` (a failure is audited as ``ok: false`` without its message,
which may quote key values)."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from studyhub.audit import write_audit
from studyhub.connect import connect, first_line
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

    def start(self, prof: Profile, table: str, columns: list[str], name: str | None,
              client: str | None, database: str | None = None) -> IndexJob:
        schema, tname = indexes.split_table(table)
        if not tname or not columns or not all(columns):
            raise StudyhubError("name a table and at least one column")
        iname = name or indexes.index_name(tname, columns)
        statement = indexes.create_index_sql(schema, tname, columns, iname).as_string(None)
        with self._lock:
            for j in self._jobs.values():
                if j.profile == prof.name and j.index == iname and j.state == "running":
                    raise RefusedError(f"index {iname} is already being built (job {j.id}); "
                                       "nothing was started")
            job = IndexJob(secrets.token_hex(6), prof.name, f"{schema}.{tname}", list(columns),
                           iname, statement, client)
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, prof, database), name=f"index-build-{job.id}",
                         daemon=True).start()
        return job

    def _run(self, job: IndexJob, prof: Profile, database: str | None) -> None:
        pooler_ports = {prof.pooler_port} if prof.pooler_port else set()

        def on_progress(p: indexes.BuildProgress) -> None:
            job.phase, job.fraction = p.phase, p.fraction

        try:
            with connect(prof, "app", database=database, autocommit=True,
                         application_name=APP_NAME) as conn:
                job.phase = "building"
                result = indexes.create_index(
                    conn, job.table, job.columns, name=job.index, pooler_ports=pooler_ports,
                    monitor=lambda: connect(prof, "ops", database=database, autocommit=True,
                                            application_name=APP_NAME + " progress"),
                    progress=on_progress)
            job.result, job.state, job.phase, job.fraction = result, "done", "done", 1.0
            write_audit("diag.create_index", prof.name, table=f"{result.schema}.{result.table}",
                        index=result.index, columns=result.columns, attempts=result.attempts,
                        already_existed=result.already_existed,
                        duration_s=round(result.duration_s, 2), via="dashboard",
                        client=job.client)
        except StudyhubError as exc:
            job.state, job.phase, job.error = "failed", "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - shown on the job page, never lost
            job.state, job.phase, job.error = "failed", "failed", first_line(exc)
        finally:
            job.finished_at = datetime.now(timezone.utc)
        if job.state == "failed":
            write_audit("diag.create_index", prof.name, table=job.table, index=job.index,
                        columns=job.columns, ok=False, via="dashboard",
                        client=job.client)
