"""The synthetic workload that runs against a database while a migration is measured on it.

- ``app``: client threads, each on its own connection as the app role, doing requests shaped like
  the API's (``ops/sql/get_workload_*.sql`` / ``do_workload_*.sql``): due cards, a card's review
  history, a student's notes (reads); reviewing a card (SELECT … FOR UPDATE, UPDATE the card,
  INSERT the review, one transaction) and editing a note (writes) — on existing rows sampled
  before the start.
- ``top``: the app role's top statements of pg_stat_statements (read as the ops role), replayed
  with generic parameters (1 for numbers, '' for text, true for booleans, NULL otherwise). Only
  plain SELECTs reading at least one app table are replayed: no FOR UPDATE/SHARE, no
  data-modifying CTE, no call of a VOLATILE function, no catalog-only question (the tools'
  own); everything else is skipped (and counted in ``skipped``).

Each request's latency and error is recorded with its start and end time; the caller keeps the
requests that overlap the migration. ``pids`` are the workload's backends, so the lock watcher
can tell its blocked requests from other sessions'.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pglast
from pglast import ast
from pglast.visitors import Visitor
from psycopg import sql

from studyhub.connect import connect, first_line
from studyhub.ops.queries import load
from studyhub.profiles import Profile

APP_NAME = "studyhub migrate rehearse (workload)"


@dataclass
class WorkloadSpec:
    kind: str = "app"  # "app" | "top"
    clients: int = 4
    top_n: int = 20
    think_s: float = 0.005  # pause between one client's requests


@dataclass
class WorkloadStats:
    requests: int
    errors: int
    p50_s: float
    p99_s: float
    max_s: float
    kind: str = "app"
    clients: int = 0
    writes: int = 0
    write_max_s: float = 0.0
    blocked_writes: int = 0  # the workload's requests seen waiting behind the migration
    blocked_reads: int = 0
    skipped_statements: int = 0  # top: statements not replayed (not a plain SELECT)
    error_examples: list[str] = field(default_factory=list)


@dataclass
class Request:
    started: float  # time.monotonic()
    finished: float
    write: bool
    error: str | None = None


@dataclass
class Replayable:
    text: str
    reason_skipped: str | None = None


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, -(-len(s) * 99 // 100) - 1)]


# --------------------------------------------------------------------------- "top": what to replay
class _Unsafe(Visitor):
    def __init__(self, volatile: set[str]) -> None:
        super().__init__()
        self.volatile, self.reason = volatile, None
        self.app_tables = 0

    def visit_RangeVar(self, ancestors, node):  # noqa: N802
        schema, name = node.schemaname or "", node.relname or ""
        if schema not in ("pg_catalog", "information_schema") and not name.startswith("pg_") \
                and name != "alembic_version":
            self.app_tables += 1

    def visit_SelectStmt(self, ancestors, node):  # noqa: N802 (pglast's visitor names)
        if node.lockingClause:
            self.reason = "SELECT … FOR UPDATE/SHARE"

    def visit_InsertStmt(self, ancestors, node):  # noqa: N802
        self.reason = "data-modifying CTE"

    visit_UpdateStmt = visit_DeleteStmt = visit_MergeStmt = visit_InsertStmt

    def visit_FuncCall(self, ancestors, node):  # noqa: N802
        name = node.funcname[-1].sval
        if name in self.volatile:
            self.reason = f"calls the volatile function {name}()"


def replay_check(text: str, volatile: set[str]) -> Replayable:
    """Whether a pg_stat_statements text is safe to replay: one plain SELECT that changes
    nothing (see the module's docstring)."""
    try:
        stmts = pglast.parse_sql(text)
    except Exception:
        return Replayable(text, "does not parse")
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt):
        return Replayable(text, "not a SELECT")
    check = _Unsafe(volatile)
    check(stmts[0].stmt)
    if check.reason is None and not check.app_tables:
        check.reason = "reads no app table"
    return Replayable(text, check.reason)


def generic_value(type_name: str) -> sql.Composable:
    """A generic parameter value by type: enough to plan, lock and run the statement."""
    t = type_name.lower()
    if t in ("smallint", "integer", "bigint", "numeric", "real", "double precision"):
        return sql.SQL("1::{}").format(sql.SQL(t))
    if t in ("text", "character varying", "name", "citext", "character"):
        return sql.SQL("''::{}").format(sql.SQL(t))
    if t == "boolean":
        return sql.SQL("true")
    return sql.NULL


def top_statements(profile: Profile, database: str | None, n: int) -> list[Replayable]:
    """The app role's statements by total execution time, until ``n`` replayable ones: those
    and the ones skipped on the way (each with why)."""
    app_user = profile.endpoint("app", database).user
    with connect(profile, "ops", database=database, autocommit=True,
                 application_name=APP_NAME) as conn:
        volatile = {r[0] for r in conn.execute(load("get_volatile_function_names")).fetchall()}
        rows = conn.execute(load("get_statement_stats")).fetchall()
    out: list[Replayable] = []
    for text in (r[2] for r in rows if r[1] == app_user and r[2]):
        out.append(replay_check(text, volatile))
        if sum(1 for r in out if r.reason_skipped is None) >= n:
            break
    return out


# --------------------------------------------------------------------------- the clients
@dataclass
class Workload:
    """Start with ``start()`` (samples rows / prepares statements, opens one connection per
    client), stop with ``stop()`` (also on errors and Ctrl-C: cancels in-flight requests)."""

    profile: Profile
    database: str | None
    spec: WorkloadSpec
    requests: list[Request] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    skipped: list[Replayable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        if self.spec.kind not in ("app", "top"):
            raise ValueError(f"unknown workload {self.spec.kind!r} (app or top)")
        if self.spec.clients < 1:
            return
        ops = self._app_ops() if self.spec.kind == "app" else self._top_ops()
        if not ops:
            return
        try:
            for i in range(self.spec.clients):
                conn = connect(self.profile, "app", database=self.database, autocommit=True,
                               application_name=APP_NAME)
                conn.execute("SET statement_timeout = '10min'")
                self._conns.append(conn)
                self.pids.add(conn.info.backend_pid)
            if self.spec.kind == "top":
                self._prepare_all(ops)
            for i, conn in enumerate(self._conns):
                t = threading.Thread(target=self._client, args=(conn, ops, i), daemon=True,
                                     name=f"studyhub-rehearse-workload-{i}")
                self._threads.append(t)
                t.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        for conn in self._conns:  # still in a request (blocked): cancel it
            try:
                conn.cancel()
            except Exception:
                pass
        for t in self._threads:
            t.join(timeout=10)
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass
        self._threads, self._conns = [], []

    # ------------------------------------------------------------------ app
    def _app_ops(self) -> list[tuple[bool, Callable]]:
        with connect(self.profile, "app", database=self.database, autocommit=True,
                     application_name=APP_NAME) as conn:
            rows = dict(conn.execute(load("get_workload_table_rows")).fetchall())

            def sample(name: str, table: str) -> list[tuple]:
                percent = min(100.0, max(0.01, 200_000.0 / max(rows.get(table, 0), 1)))
                return [tuple(r) for r in conn.execute(load(name), {"percent": percent})]

            cards = sample("get_workload_sample_cards", "flashcards") if "flashcards" in rows \
                else []
            notes = sample("get_workload_sample_notes", "notes") if "notes" in rows else []
        ops: list[tuple[bool, Callable]] = []
        if cards:
            def due(conn, rng):
                conn.execute(load("get_workload_due_cards"),
                             {"student_id": rng.choice(cards)[1]}).fetchall()

            def history(conn, rng):
                card, student = rng.choice(cards)
                conn.execute(load("get_workload_card_reviews"),
                             {"student_id": student, "card_id": card}).fetchall()

            def review(conn, rng):
                card, student = rng.choice(cards)
                args = {"student_id": student, "card_id": card}
                with conn.transaction():
                    conn.execute(load("get_workload_card_for_update"), args).fetchall()
                    conn.execute(load("do_workload_update_card"), args)
                    conn.execute(load("do_workload_insert_review"), args)

            ops += [(False, due), (False, due), (False, history), (False, history),
                    (True, review), (True, review)]
        if notes:
            def list_notes(conn, rng):
                conn.execute(load("get_workload_notes"),
                             {"student_id": rng.choice(notes)[1]}).fetchall()

            def edit_note(conn, rng):
                note, student = rng.choice(notes)
                conn.execute(load("do_workload_update_note"),
                             {"note_id": note, "student_id": student})

            ops += [(False, list_notes), (False, list_notes), (True, edit_note)]
        if not ops:
            self.notes.append("no flashcards or notes to work on: the app workload sent nothing")
        return ops

    # ------------------------------------------------------------------ top
    def _top_ops(self) -> list[tuple[bool, Callable]]:
        found = top_statements(self.profile, self.database, self.spec.top_n)
        self.skipped = [r for r in found if r.reason_skipped]
        replay = [r for r in found if not r.reason_skipped]
        if not replay:
            self.notes.append("no replayable SELECT among the top statements of "
                              "pg_stat_statements: the top workload sent nothing")
        ops = []
        for i, _ in enumerate(replay):
            def run(conn, rng, i=i):
                conn.execute(conn._studyhub_replay[i]).fetchall()  # type: ignore[attr-defined]
            ops.append((False, run))
        self._replay = replay
        return ops

    def _prepare_all(self, ops) -> None:
        for conn in self._conns:
            executes = []
            for i, r in enumerate(self._replay):
                name = sql.Identifier(f"studyhub_replay_{i}")
                try:
                    conn.execute(sql.SQL("PREPARE {} AS ").format(name) + sql.SQL(r.text))
                    types = conn.execute(load("get_prepared_statement_parameter_types"),
                                         {"name": f"studyhub_replay_{i}"}).fetchone()[0] or []
                    q = sql.SQL("EXECUTE {}").format(name)
                    if types:
                        q += sql.SQL("({})").format(
                            sql.SQL(", ").join(generic_value(t) for t in types))
                    executes.append(q)
                except Exception as exc:
                    executes.append(sql.SQL("SELECT 1"))
                    self.notes.append(f"cannot prepare a top statement: {first_line(exc)}")
            conn._studyhub_replay = executes

    # ------------------------------------------------------------------ the loop
    def _client(self, conn, ops, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            write, op = rng.choice(ops)
            started = time.monotonic()
            error = None
            try:
                op(conn, rng)
            except Exception as exc:
                if self._stop.is_set() and conn.closed:
                    return
                error = first_line(exc)
            req = Request(started, time.monotonic(), write, error)
            with self._lock:
                self.requests.append(req)
            if conn.closed:
                return
            self._stop.wait(self.spec.think_s)


def workload_stats(requests: list[Request], spec: WorkloadSpec, pids: set[int],
                    waits: list[Any], m_start: float, m_end: float,
                    skipped: int = 0) -> WorkloadStats:
    """The requests that overlapped the migration (``m_start``..``m_end``), and the waits
    (lock watcher) of the workload's own backends."""
    during = [r for r in requests if r.started <= m_end and r.finished >= m_start]
    lat = sorted(r.finished - r.started for r in during)
    ours = [e for e in waits if e.pid in pids]
    writes = [r for r in during if r.write]
    errors = [r.error for r in during if r.error]
    return WorkloadStats(
        requests=len(during), errors=len(errors),
        p50_s=round(lat[len(lat) // 2], 4) if lat else 0.0,
        p99_s=round(_p99(lat), 4), max_s=round(lat[-1], 4) if lat else 0.0,
        kind=spec.kind, clients=spec.clients if requests or pids else 0, writes=len(writes),
        write_max_s=round(max((r.finished - r.started for r in writes), default=0.0), 4),
        blocked_writes=sum(1 for e in ours if e.mode != "ACCESS SHARE"),
        blocked_reads=sum(1 for e in ours if e.mode == "ACCESS SHARE"),
        skipped_statements=skipped, error_examples=sorted(set(errors))[:3])
