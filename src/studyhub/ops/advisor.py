"""``diag advise``: cost-based index advice with hypopg (Dexter's method).

1. Take the costliest statements of this database from pg_stat_statements.
2. Plan each one generically (normalized ``$n`` statements: PREPARE + force_generic_plan +
   EXPLAIN EXECUTE with NULLs) — the cost before.
3. From each plan, collect the columns its scans filter, join and sort on (EXPLAIN VERBOSE
   qualifies them with the table's alias).
4. Create hypothetical single-column indexes on all of them (hypopg: nothing is built), re-plan;
   then add two-column candidates and re-plan again.
5. Recommend an index only for statements called at least ``min_calls`` times (10: a one-off
   such as a migration's backfill is never indexed for; Dexter's --min-calls defaults to 0),
   when the statement costs at least ``min_cost`` and the index cuts its
   cost by at least ``min_saving_pct`` (Dexter's defaults: 100 and 50%); a two-column index
   replaces the single-column one only when the cost left by that one is still at least
   ``min_cost`` and the wider index cuts it by a further ``min_saving_pct``. Candidates that
   an existing valid index already leads with are skipped.
6. Drop a recommendation whose columns lead another recommendation on the same table (the
   longer index serves both), then re-plan every statement with only the final set of
   hypothetical indexes: each recommendation lists the statements that really use it, with
   their cost before and after.

Runs as the app role: planning needs SELECT on the tables. Everything happens in a transaction
that is rolled back, and the hypothetical indexes are reset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import psycopg
from pglast import ast
from psycopg import sql
from psycopg.rows import dict_row

from studyhub.connect import first_line
from studyhub.errors import StudyhubError
from studyhub.ops import indexes
from studyhub.ops.explain import generic_plan
from studyhub.ops.extensions import require_extension
from studyhub.ops.queries import load
from studyhub.ops.sqltext import Statement, one_statement

NOT_APP = re.compile(r"\b(pg_catalog|information_schema|pg_stat\w*|pg_class|pg_index|pg_namespace|"
                     r"pg_attribute|pg_database|pg_roles|pg_locks|pg_extension|hypopg\w*|ops\.)\b",
                     re.I)
QUALIFIED = re.compile(r"\b([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)\b")
CONDITION_KEYS = ("Filter", "Index Cond", "Recheck Cond", "Hash Cond", "Merge Cond",
                  "Join Filter", "Sort Key", "Presorted Key", "Group Key")
MAX_PAIRS_PER_TABLE = 12

Column = tuple[str, str, str]  # schema, table, column


@dataclass
class Candidate:
    schema: str
    table: str
    columns: tuple[str, ...]

    @property
    def ddl(self) -> str:
        return indexes.create_index_sql(self.schema, self.table, list(self.columns),
                                        concurrently=False).as_string(None)


@dataclass
class StatementAdvice:
    queryid: int
    calls: int
    total_exec_ms: float
    query: str
    cost_before: float | None
    cost_after: float | None = None
    saving_pct: float | None = None
    index: list[str] | None = None  # schema, table, columns… of the recommended index
    note: str | None = None


@dataclass
class Recommendation:
    schema: str
    table: str
    columns: list[str]
    index_name: str
    create_sql: str
    queryids: list[int]
    cost_before: float
    cost_after: float

    @property
    def saving_pct(self) -> float:
        return 100.0 * (1 - self.cost_after / self.cost_before) if self.cost_before else 0.0


@dataclass
class AdviceReport:
    database: str
    min_cost: float
    min_saving_pct: float
    statements: list[StatementAdvice]
    recommendations: list[Recommendation]
    candidates_tried: int = 0
    notes: list[str] = field(default_factory=list)
    min_calls: int = 1


def _options(verbose: bool = True) -> sql.Composable:
    return sql.SQL("FORMAT JSON, VERBOSE") if verbose else sql.SQL("FORMAT JSON")


def plannable(query: str) -> Statement | None:
    """The statement of a pg_stat_statements text, if it is one the advisor plans: exactly one
    statement, as PostgreSQL's own parser reads it, that is a SELECT (not SELECT INTO), UPDATE
    or DELETE (also with WITH)."""
    try:
        stmt = one_statement(query)
    except StudyhubError:  # several statements, none, or unparseable: never planned
        return None
    node = stmt.node
    if isinstance(node, ast.SelectStmt) and not node.intoClause or \
            isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)):
        return stmt
    return None


def plan(conn: psycopg.Connection, query: str) -> dict[str, Any]:
    """Generic plan of one statement (JSON, VERBOSE), inside a savepoint. Anything but exactly
    one statement is refused (``sqltext.one_statement``) and PREPARE goes over the extended
    protocol, so a pg_stat_statements text never runs more than that one statement."""
    stmt = one_statement(query)
    with conn.transaction():
        return generic_plan(conn, stmt, _options(), name="studyhub_advise")[0]["Plan"]


def _walk(node: dict[str, Any]):
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def plan_columns(root: dict[str, Any], table_columns: dict[tuple[str, str], set[str]]) -> set[Column]:
    """Columns the plan's scans filter, join or sort on, as (schema, table, column)."""
    aliases: dict[str, tuple[str, str]] = {}
    for node in _walk(root):
        if "Relation Name" in node and "Schema" in node:
            aliases[node.get("Alias", node["Relation Name"])] = (node["Schema"], node["Relation Name"])
    found: set[Column] = set()
    for node in _walk(root):
        for key in CONDITION_KEYS:
            value = node.get(key)
            if value is None:
                continue
            text = " ".join(value) if isinstance(value, list) else str(value)
            for alias, column in QUALIFIED.findall(text):
                target = aliases.get(alias)
                if target and column in table_columns.get(target, set()):
                    found.add((*target, column))
    return found


def used_indexes(root: dict[str, Any]) -> set[str]:
    return {n["Index Name"] for n in _walk(root) if "Index Name" in n}


def _existing_leading(conn: psycopg.Connection) -> set[tuple[str, str, tuple[str, ...]]]:
    """(schema, table, leading columns) for every prefix of every valid index."""
    out = set()
    for d in indexes.index_definitions(conn):
        if not d.is_valid or d.predicate or d.has_expressions:
            continue
        keys = tuple(c for c in d.key_columns if c)
        for n in range(1, len(keys) + 1):
            out.add((d.schema, d.table, keys[:n]))
    return out


def _hypothetical(conn: psycopg.Connection, cands: list[Candidate]) -> dict[str, Candidate]:
    names = {}
    for c in cands:
        row = conn.execute(load("do_create_hypothetical_index"), {"ddl": c.ddl}).fetchone()
        names[row[1]] = c
    return names


def _costs(conn: psycopg.Connection, todo: list[StatementAdvice]) -> dict[int, tuple[float, set[str]]]:
    out = {}
    for st in todo:
        try:
            root = plan(conn, st.query)
        except psycopg.Error:
            continue
        out[st.queryid] = (root["Total Cost"], used_indexes(root))
    return out


DEFAULT_MIN_CALLS = 10


def advise(conn: psycopg.Connection, *, limit: int = 50, min_calls: int = DEFAULT_MIN_CALLS,
           min_cost: float = 100.0, min_saving_pct: float = 50.0,
           statement_timeout: str = "30s") -> AdviceReport:
    """Index advice for the costliest statements called at least ``min_calls`` times: a
    one-off (a migration's backfill, a report run once) is listed with a note, never indexed
    for — every index costs each write forever."""
    require_extension(conn, "pg_stat_statements", "index advice")
    require_extension(conn, "hypopg", "index advice")
    if conn.autocommit:
        raise ValueError("advise needs a connection outside autocommit (it rolls back)")
    report = AdviceReport(conn.info.dbname, min_cost, min_saving_pct, [], [],
                          min_calls=min_calls)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("get_costly_statements"),
                           {"min_calls": 1, "limit": limit * 4}).fetchall()
        cols = cur.execute(load("get_user_table_columns")).fetchall()
    table_columns: dict[tuple[str, str], set[str]] = {}
    for r in cols:
        table_columns.setdefault((r["schema"], r["table"]), set()).add(r["column"])
    existing = _existing_leading(conn)
    conn.rollback()
    try:
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(statement_timeout)))
        conn.execute(load("do_reset_hypothetical_indexes"))
        analysed: list[StatementAdvice] = []
        wanted: dict[int, set[Column]] = {}
        for r in rows:
            if len(analysed) >= limit:
                break
            q = r["query"]
            if plannable(q) is None or NOT_APP.search(q):
                continue
            st = StatementAdvice(r["queryid"], r["calls"], r["total_exec_ms"], q, None)
            if r["calls"] < min_calls:
                st.note = (f"{r['calls']} call(s) < {min_calls}: a one-off is not worth an "
                           "index (--min-calls)")
                report.statements.append(st)
                continue
            try:
                root = plan(conn, q)
            except psycopg.Error as exc:
                st.note = f"cannot plan generically: {first_line(exc)}"
                report.statements.append(st)
                continue
            st.cost_before = root["Total Cost"]
            if st.cost_before < min_cost:
                st.note = f"cost {st.cost_before:.0f} < {min_cost:g}: not worth an index"
                report.statements.append(st)
                continue
            analysed.append(st)
            wanted[st.queryid] = plan_columns(root, table_columns)
            report.statements.append(st)
        # pass 1: every single-column candidate at once
        singles = sorted({(s, t, c) for cs in wanted.values() for (s, t, c) in cs
                          if (s, t, (c,)) not in existing})
        single_cands = [Candidate(s, t, (c,)) for s, t, c in singles]
        names1 = _hypothetical(conn, single_cands)
        pass1 = _costs(conn, analysed)
        # pass 2: add two-column candidates of columns used together
        pairs: set[tuple[str, str, tuple[str, str]]] = set()
        for cs in wanted.values():
            by_table: dict[tuple[str, str], list[str]] = {}
            for s, t, c in cs:
                by_table.setdefault((s, t), []).append(c)
            for (s, t), columns in by_table.items():
                for pair in list(permutations(sorted(columns), 2))[:MAX_PAIRS_PER_TABLE]:
                    if (s, t, pair) not in existing:
                        pairs.add((s, t, pair))
        pair_cands = [Candidate(s, t, p) for s, t, p in sorted(pairs)]
        names2 = _hypothetical(conn, pair_cands)
        pass2 = _costs(conn, analysed) if pair_cands else {}
        report.candidates_tried = len(single_cands) + len(pair_cands)
        all_names = {**names1, **names2}
        chosen: dict[tuple[str, str, tuple[str, ...]], list[StatementAdvice]] = {}
        for st in analysed:
            best: tuple[float, Candidate | None] = (st.cost_before, None)
            if st.queryid in pass1:
                cost, used = pass1[st.queryid]
                hypo = [names1[n] for n in used if n in names1]
                if hypo and cost <= st.cost_before * (1 - min_saving_pct / 100):
                    best = (cost, hypo[0])
            # Widen to two columns only while the statement is still worth indexing after the
            # single-column index (cost left >= min_cost): a wider index costs every write.
            if st.queryid in pass2 and (best[1] is None or best[0] >= min_cost):
                cost, used = pass2[st.queryid]
                hypo = [all_names[n] for n in used if n in names2]
                if hypo and cost <= best[0] * (1 - min_saving_pct / 100) and \
                        cost <= st.cost_before * (1 - min_saving_pct / 100):
                    best = (cost, hypo[0])
            cost, cand = best
            if cand is None:
                st.note = st.note or "no index cuts its cost enough"
                continue
            st.cost_after = cost
            st.saving_pct = 100.0 * (1 - cost / st.cost_before)
            st.index = [cand.schema, cand.table, *cand.columns]
            chosen.setdefault((cand.schema, cand.table, cand.columns), []).append(st)
        # a chosen index that is a prefix of another chosen one is served by the longer one
        final = {k for k in chosen if not any(
            o != k and o[:2] == k[:2] and o[2][:len(k[2])] == k[2] for o in chosen)}
        # verify: only the final set, re-planned; each statement credits the index it uses
        conn.execute(load("do_reset_hypothetical_indexes"))
        names3 = _hypothetical(conn, [Candidate(*k) for k in sorted(final)])
        verified = _costs(conn, analysed)
        credited: dict[tuple[str, str, tuple[str, ...]], list[StatementAdvice]] = {}
        for st in analysed:
            if st.queryid not in verified or st.index is None:
                continue
            cost, used = verified[st.queryid]
            hypo = [names3[n] for n in used if n in names3]
            if not hypo or cost > st.cost_before * (1 - min_saving_pct / 100):
                st.index, st.cost_after, st.saving_pct = None, None, None
                st.note = "no index cuts its cost enough"
                continue
            cand = hypo[0]
            st.cost_after = cost
            st.saving_pct = 100.0 * (1 - cost / st.cost_before)
            st.index = [cand.schema, cand.table, *cand.columns]
            credited.setdefault((cand.schema, cand.table, cand.columns), []).append(st)
        for (s, t, columns), sts in sorted(credited.items()):
            name = indexes.index_name(t, list(columns))
            report.recommendations.append(Recommendation(
                s, t, list(columns), name,
                indexes.create_index_sql(s, t, list(columns), name).as_string(None) + ";",
                [x.queryid for x in sts], sum(x.cost_before or 0 for x in sts),
                sum(x.cost_after or 0 for x in sts)))
    finally:
        conn.rollback()
        try:
            conn.execute(load("do_reset_hypothetical_indexes"))
            conn.rollback()
        except psycopg.Error:
            conn.rollback()
    if not rows:
        report.notes.append("pg_stat_statements has no statements of this database visible to "
                            f"role {conn.info.user} yet: run the workload first")
    return report


def attach_advice(report: "indexes.IndexReport", advice: AdviceReport) -> None:
    """Give each "missing" finding of ``report`` the CREATE INDEX statements the advisor
    recommends for its table (or say that it found none worth building)."""
    for finding in report.missing:
        recs = [r for r in advice.recommendations
                if (r.schema, r.table) == (finding.schema, finding.table)]
        if recs:
            finding.fix_sql = " ".join(r.create_sql for r in recs)
            finding.details["advised"] = [
                {"columns": r.columns, "cost_before": r.cost_before, "cost_after": r.cost_after,
                 "queryids": r.queryids} for r in recs]
        else:
            finding.details["hint"] = ("the advisor found no index that cuts a costly "
                                       "statement's cost enough (the scans may be cheap, or "
                                       "the statements ran under another role)")
