"""The restore scheduler: format 2's table loads, index/key/foreign-key builds and per-table
verification on ``--jobs`` connections, each task started as soon as what it needs is done (no
barrier between phases), never two tasks at once whose table locks conflict."""

from __future__ import annotations

import re
import threading
import time
from contextlib import closing
from dataclasses import dataclass

import psycopg
from psycopg import sql

from studyhub.connect import connect
from studyhub.ops.backup.checksums import checksum_one, pin_checksum_settings
from studyhub.ops.backup.setformat import BackupError, Manifest, TableChecksum, TableFile
from studyhub.ops.backup.setio import SetSource
from studyhub.ops.backup.streams import data_chunks
from studyhub.ops.backup.toc import IDENT, PostItem, TocEntry
from studyhub.ops.backup.workers import ProgressEvent, ProgressFn, raise_first, run_threads
from studyhub.ops.queries import load
from studyhub.ops.sqltext import execute_extended
from studyhub.profiles import Profile


@dataclass
class RestoreStep:
    name: str  # e.g. "schema", "data: public.notes", "index ix_notes_student_id"
    kind: str  # schema | data | index | constraint | fk | other | verify | ...
    duration_s: float



# The table lock each scheduled task takes, and which modes conflict (PostgreSQL's table-level
# lock matrix): two tasks whose locks conflict never run at once on a table, because one
# would only wait for the other with a connection held idle.
TASK_LOCK = {"INDEX": "SHARE", "KEY INDEX": "SHARE", "KEY ATTACH": "ACCESS EXCLUSIVE",
             "CONSTRAINT": "ACCESS EXCLUSIVE",
             "FK CONSTRAINT": "SHARE ROW EXCLUSIVE", "CHECKSUM": "ACCESS SHARE",
             "ANALYZE": "SHARE UPDATE EXCLUSIVE"}
LOCK_CONFLICTS = {
    "ACCESS SHARE": {"ACCESS EXCLUSIVE"},
    "SHARE UPDATE EXCLUSIVE": {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                               "ACCESS EXCLUSIVE"},
    "SHARE": {"SHARE UPDATE EXCLUSIVE", "SHARE ROW EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "SHARE ROW EXCLUSIVE": {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                            "ACCESS EXCLUSIVE"},
    "ACCESS EXCLUSIVE": {"ACCESS SHARE", "SHARE UPDATE EXCLUSIVE", "SHARE",
                         "SHARE ROW EXCLUSIVE", "ACCESS EXCLUSIVE"},
}

_SIMPLE_KEY_RE = re.compile(
    r"ALTER TABLE ONLY (?P<qual>" + IDENT + r"\." + IDENT + r")\s+ADD CONSTRAINT "
    r"(?P<name>" + IDENT + r") (?P<kind>PRIMARY KEY|UNIQUE) \((?P<cols>[^()]*)\);")  # fullmatch


def split_keys(items: list[PostItem], tables: set[tuple[str, str]]) -> list[PostItem]:
    """A plain primary key or unique constraint becomes two steps: ``CREATE UNIQUE INDEX`` (a
    SHARE lock: it builds beside the table's other indexes) and ``ADD CONSTRAINT … USING
    INDEX`` (instant), the same catalog result as ``ADD CONSTRAINT … (cols)`` whose ACCESS
    EXCLUSIVE lock would keep the table's other builds waiting. Anything less plain
    (DEFERRABLE, INCLUDE, NULLS NOT DISTINCT, partitioned tables) stays one step."""
    out: list[PostItem] = []
    for p in items:
        m = _SIMPLE_KEY_RE.fullmatch(p.statement) if p.entry.desc == "CONSTRAINT" else None
        if not m or p.table not in tables:
            out.append(p)
            continue
        build = PostItem(TocEntry(p.entry.dump_id, "KEY INDEX", p.entry.schema, p.entry.tag,
                                  p.entry.line), p.table,
                         f"CREATE UNIQUE INDEX {m.group('name')} ON {m.group('qual')} "
                         f"USING btree ({m.group('cols')});",
                         index=re.sub(r'^"|"$', "", m.group("name")).replace('""', '"'))
        attach = PostItem(TocEntry(p.entry.dump_id, "KEY ATTACH", p.entry.schema, p.entry.tag,
                                   p.entry.line), p.table,
                          f"ALTER TABLE ONLY {m.group('qual')} ADD CONSTRAINT {m.group('name')} "
                          f"{m.group('kind')} USING INDEX {m.group('name')};", after=build)
        out += [build, attach]
    return out


Table = tuple[str, str]
Task = TableFile | PostItem


class RestoreScheduler:
    """Format 2's data, index/key/foreign-key builds and verification on ``jobs`` connections,
    each task started as soon as what it needs is done (no barrier between phases):

    * data, biggest table first: one transaction per table, ``TRUNCATE ONLY t; COPY t (cols)
      FROM STDIN (FORMAT binary, FREEZE)`` fed by streaming decompression (of the set's
      object, downloaded, checked and decrypted as it streams where it is remote or
      encrypted: an object that fails its check fails its table's transaction, before COMMIT).
      A table with rows is complete, so a resumed restore skips it (reloading one would
      replace, not duplicate);
    * an index or primary/unique key: once its table is loaded;
    * a foreign key: once both tables are loaded and the referenced table's keys and indexes
      are built;
    * verify: once the table is loaded, its row count and checksum (compared with the
      manifest by the caller); ANALYZE once its indexes and keys are built too.

    Loads go first (they unblock everything else), then the ready task on the biggest table
    (keys, then indexes, checksum, foreign keys, ANALYZE). Tasks whose table locks conflict
    never run at once (one would only wait for the other). ``run()`` returns the steps, every
    table's checksum, and when the last table was loaded.

    The workers share the queues and the state below under ``cond``: ``pick`` takes the next
    ready task (waiting while none is), ``finished`` records a done task and wakes the others.
    """

    ORDER = {"CONSTRAINT": 0, "KEY INDEX": 1, "INDEX": 1, "KEY ATTACH": 2, "CHECKSUM": 3,
             "FK CONSTRAINT": 4, "ANALYZE": 5}
    BUILDS = ("INDEX", "CONSTRAINT", "KEY INDEX", "KEY ATTACH")

    def __init__(self, profile: Profile, database: str, source: SetSource, manifest: Manifest,
                 post: list[PostItem], session: list[str], jobs: int,
                 settings: dict[str, str], progress: ProgressFn) -> None:
        self.profile, self.database, self.source = profile, database, source
        self.manifest, self.session, self.jobs = manifest, session, jobs
        self.settings, self.progress = settings, progress
        sizes = {f.path: f.bytes for f in manifest.files}
        self.expected = {t.qualified: t.rows for t in manifest.tables}
        self.raw = {(f.schema, f.table): f.raw_bytes or sizes.get(f.path, 0)
                    for f in manifest.table_files}
        post = split_keys(post, set(self.raw))
        # the work a table brings, in rough seconds: loading its bytes, then reading its rows
        # once per index, key and foreign key (and checksum). The table with the most goes
        # first: it is the critical path (the biggest table with the most indexes, not the
        # widest rows)
        self.n_items: dict[Table, int] = {}
        for p in post:
            self.n_items[p.table] = self.n_items.get(p.table, 0) + 1
        self.rows = {(t.schema, t.table): t.rows for t in manifest.tables}

        self.data_queue: list[TableFile] = sorted(
            manifest.table_files, key=lambda f: -self.work((f.schema, f.table)))
        verify_items = [PostItem(TocEntry(0, kind, t.schema, t.table, ""), (t.schema, t.table), "")
                        for t in manifest.tables for kind in ("CHECKSUM", "ANALYZE")]
        self.queue = sorted(post + verify_items,
                            key=lambda p: (-self.work(p.table), self.ORDER[p.entry.desc]))
        self.not_loaded = {(f.schema, f.table) for f in self.data_queue}
        self.unbuilt: dict[Table, int] = {}  # table → its index/key builds not yet done
        for p in post:
            if p.entry.desc in self.BUILDS:
                self.unbuilt[p.table] = self.unbuilt.get(p.table, 0) + 1
        self.total = len(self.data_queue) + len(self.queue)
        self.cond = threading.Condition()
        self.running: dict[Table, list[str]] = {}
        self.steps: list[RestoreStep] = []
        self.sums: dict[str, TableChecksum] = {}
        self.methods = {t.qualified: t.method for t in manifest.tables}
        self.errors: list[BaseException] = []
        self.loaded_bytes = 0
        self.t0 = time.monotonic()
        self.data_done_at = self.t0

    def work(self, t: Table) -> float:
        return (self.raw.get(t, 0) / 100e6
                + (self.n_items.get(t, 0) + 1) * self.rows.get(t, 0) / 1.5e6)

    def run(self) -> tuple[list[RestoreStep], list[TableChecksum], float]:
        self._skip_loaded_tables()
        self.t0 = self.data_done_at = time.monotonic()
        self.progress(ProgressEvent("data", 0, self.total))
        run_threads(self._worker, min(self.jobs, self.total))
        raise_first(self.errors, "restoring table data")
        return (self.steps, [self.sums[t.qualified] for t in self.manifest.tables],
                round(self.data_done_at - self.t0, 3))

    def _skip_loaded_tables(self) -> None:
        """Only tables that should have rows and have none yet are loaded (a resumed restore)."""
        with connect(self.profile, "app", database=self.database, autocommit=True,
                     application_name="studyhub restore") as conn:
            self.data_queue = [
                f for f in self.data_queue
                if self.expected.get(f.qualified, 0) > 0 and not conn.execute(
                    sql.SQL(load("get_table_has_rows")).format(
                        table=sql.Identifier(f.schema, f.table))).fetchone()[0]]
        self.not_loaded = {(f.schema, f.table) for f in self.data_queue}
        self.total = len(self.data_queue) + len(self.queue)

    # ------------------------------------------------------------- shared state (under cond)
    @staticmethod
    def _tables_of(p: PostItem) -> list[Table]:
        return [p.table] + ([p.references] if p.references and p.references != p.table else [])

    def _ready(self, p: PostItem) -> bool:
        if any(t in self.not_loaded for t in self._tables_of(p)):
            return False
        if p.entry.desc == "FK CONSTRAINT" and self.unbuilt.get(p.references, 0):  # type: ignore[arg-type]
            return False
        if p.entry.desc == "ANALYZE" and self.unbuilt.get(p.table, 0):  # statistics of every index
            return False
        if p.after is not None and not p.after.done:
            return False
        mine = TASK_LOCK[p.entry.desc]
        return not any(LOCK_CONFLICTS[mine] & {TASK_LOCK[d] for d in self.running.get(t, [])}
                       for t in self._tables_of(p))

    def _pick(self) -> Task | None:
        with self.cond:
            while True:
                if self.errors:
                    return None
                if self.data_queue:
                    return self.data_queue.pop(0)
                for i, p in enumerate(self.queue):
                    if self._ready(p):
                        for t in self._tables_of(p):
                            self.running.setdefault(t, []).append(p.entry.desc)
                        return self.queue.pop(i)
                if not self.queue:
                    return None
                self.cond.wait()

    def _finished(self, step: RestoreStep | None, p: Task, ok: bool = True) -> None:
        with self.cond:
            if isinstance(p, TableFile):
                self.not_loaded.discard((p.schema, p.table))
                if not self.not_loaded:
                    self.data_done_at = time.monotonic()
            else:
                for t in self._tables_of(p):
                    self.running[t].remove(p.entry.desc)
                p.done = ok
                if ok and p.entry.desc in self.BUILDS:
                    self.unbuilt[p.table] -= 1
            if step:
                self.steps.append(step)
                self.progress(ProgressEvent("data" if step.kind == "data" else "post-data",
                                            len(self.steps), self.total, self.loaded_bytes,
                                            step.name))
            self.cond.notify_all()

    # ------------------------------------------------------------------------- the tasks
    def _load_one(self, conn: psycopg.Connection, f: TableFile) -> None:
        table = sql.Identifier(f.schema, f.table)
        cols = sql.SQL(", ").join(map(sql.Identifier, f.columns))
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary, FREEZE)").format(table, cols)
        s0 = time.monotonic()
        try:
            with conn.transaction(), closing(self.source.open_plain(f.path)) as fh:
                conn.execute(sql.SQL("TRUNCATE ONLY {}").format(table))
                with conn.cursor().copy(copy) as cp:
                    for chunk in data_chunks(fh, self.manifest.compression.method, f.path):
                        cp.write(chunk)
                        self.loaded_bytes += len(chunk)
        except psycopg.Error as exc:
            raise BackupError(f"loading {f.path} into {f.qualified} failed: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        except BackupError as exc:
            text = str(exc)
            raise BackupError(text if f.path in text else f"cannot read {f.path}: {text}") from None
        except (OSError, EOFError) as exc:
            raise BackupError(f"cannot read {f.path}: {exc}") from None
        except Exception as exc:  # zstandard.ZstdError and other decoder errors
            raise BackupError(f"cannot read {f.path}: {exc.__class__.__name__}: {exc}") from None
        self._finished(RestoreStep(f"table data {f.qualified}", "data",
                                   round(time.monotonic() - s0, 3)), f)

    def _run_one(self, conn: psycopg.Connection, p: PostItem) -> None:
        s0 = time.monotonic()
        try:
            if p.entry.desc == "CHECKSUM":
                self.sums[f"{p.table[0]}.{p.table[1]}"] = checksum_one(
                    conn, p.table[0], p.table[1], self.methods.get(f"{p.table[0]}.{p.table[1]}"))
                step = RestoreStep(f"checksum {p.table[0]}.{p.table[1]}", "verify",
                                   round(time.monotonic() - s0, 3))
            elif p.entry.desc == "ANALYZE":
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*p.table)))
                step = RestoreStep(f"analyze {p.table[0]}.{p.table[1]}", "verify",
                                   round(time.monotonic() - s0, 3))
            else:
                exists = p.entry.desc == "KEY INDEX" and conn.execute(  # built by a failed run
                    load("get_relation_exists"), {"name": sql.Identifier(
                        p.table[0], p.index or "").as_string(conn)}).fetchone()[0]
                if not exists:
                    # one statement, written by pg_restore: the server refuses a second
                    execute_extended(conn, p.statement)
                label = {"KEY INDEX": "constraint", "KEY ATTACH": "constraint (attach)"}.get(
                    p.entry.desc, p.entry.desc.lower())
                step = RestoreStep(f"{label} {p.entry.tag}", "constraint" if p.entry.desc
                                   .startswith("KEY") else p.entry.kind,
                                   round(time.monotonic() - s0, 3))
        except psycopg.Error as exc:
            self._finished(None, p, ok=False)
            what = {"CHECKSUM": "checksumming", "ANALYZE": "analyzing"}.get(
                p.entry.desc, "building " + p.entry.desc.lower())
            raise BackupError(f"{what} {p.entry.tag} failed: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        self._finished(step, p)

    def _worker(self) -> None:
        try:
            with connect(self.profile, "app", database=self.database, autocommit=True,
                         application_name="studyhub restore data") as conn:
                for line in self.session:  # SET … lines pg_restore wrote, one statement each
                    execute_extended(conn, line)
                # the text checksum's settings (binary COPY ignores them)
                pin_checksum_settings(conn)
                conn.execute("SELECT set_config('client_encoding', %s, false)",
                             (self.manifest.encoding,))
                for k, v in self.settings.items():
                    conn.execute("SELECT set_config(%s, %s, false)", (k, v))
                while (task := self._pick()) is not None:
                    if isinstance(task, TableFile):
                        self._load_one(conn, task)
                    else:
                        self._run_one(conn, task)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            with self.cond:
                self.errors.append(exc)
                self.cond.notify_all()
