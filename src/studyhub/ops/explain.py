"""``diag explain``: the plan of one statement, run safely (PgHero-style): inside a transaction
that is always rolled back, with a statement_timeout and lock_timeout, one statement only —
read by PostgreSQL's own parser (``sqltext.one_statement``) and sent on the extended query
protocol (``sqltext.execute_extended``), so the server itself refuses a second one.
Statements with ``$n`` placeholders (as pg_stat_statements shows them) get a generic plan
(PREPARE + plan_cache_mode=force_generic_plan + EXPLAIN EXECUTE with NULL arguments).
Runs as the app role: planning a query needs SELECT on its tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import ast
from pglast.visitors import Visitor
from psycopg import sql

from studyhub.audit import audited
from studyhub.connect import first_line
from studyhub.durations import parse_timeout
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.queries import load
from studyhub.ops.sqltext import Statement, execute_extended, one_statement, parse_statements
from studyhub.profiles import Profile

# What EXPLAIN takes on PostgreSQL 15 (its grammar's ExplainableStmt, less REFRESH MATERIALIZED
# VIEW, which has no plan): SELECT (also VALUES, TABLE, SELECT INTO), INSERT, UPDATE, DELETE,
# MERGE, EXECUTE, DECLARE, CREATE TABLE AS and CREATE MATERIALIZED VIEW AS.
EXPLAINABLE = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt,
               ast.ExecuteStmt, ast.DeclareCursorStmt, ast.CreateTableAsStmt)
EXPLAINABLE_NAMES = ("SELECT, VALUES, TABLE, INSERT, UPDATE, DELETE, MERGE, EXECUTE, DECLARE, "
                     "CREATE TABLE AS or CREATE MATERIALIZED VIEW AS")
# What PREPARE takes (its grammar's PreparableStmt): the generic plan of $n statements.
PREPARABLE = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def explainable(text: str, *, analyze: bool = False) -> Statement:
    """The one statement of ``text`` that EXPLAIN can take, or a refusal (nothing is run):
    several statements, none, unparseable text, a statement EXPLAIN does not take (COMMIT,
    DROP, VACUUM …), EXPLAIN itself, and ``$n`` placeholders where PREPARE cannot take them or
    with ``analyze`` (that needs real values)."""
    stmt = one_statement(text)
    if isinstance(stmt.node, ast.ExplainStmt):
        raise RefusedError("give the statement without EXPLAIN: it is added here (with "
                           "ANALYZE for --analyze) (nothing was run)")
    if not isinstance(stmt.node, EXPLAINABLE):
        raise RefusedError(f"EXPLAIN cannot take {stmt.kind}: give one {EXPLAINABLE_NAMES} "
                           "(nothing was run)")
    if stmt.has_placeholders:
        if analyze:
            raise RefusedError("EXPLAIN ANALYZE needs real values; replace the $n placeholders "
                               "(nothing was run)")
        if not isinstance(stmt.node, PREPARABLE):
            raise RefusedError(f"$n placeholders get a generic plan through PREPARE, which "
                               f"takes SELECT, INSERT, UPDATE, DELETE or MERGE, not {stmt.kind} "
                               "(nothing was run)")
    return stmt


@dataclass
class ExplainResult:
    statement: str
    analyze: bool
    generic: bool
    total_cost: float | None
    actual_ms: float | None
    plan: Any  # list of text lines, or the JSON plan
    rolled_back: bool = True


# Volatile only because they read a clock or a random source: nothing to undo.
HARMLESS_VOLATILE = frozenset({"random", "random_normal", "clock_timestamp", "timeofday",
                               "pg_sleep", "pg_sleep_for", "pg_sleep_until", "gen_random_uuid",
                               "uuid_generate_v4"})
_DML = {ast.InsertStmt: "INSERT", ast.UpdateStmt: "UPDATE", ast.DeleteStmt: "DELETE",
        ast.MergeStmt: "MERGE"}


@dataclass
class AnalyzeEffects:
    """What running a statement for real (EXPLAIN ANALYZE) does beyond reading: empty
    ``reasons`` means a plain SELECT."""

    kind: str  # SELECT, UPDATE, DELETE, …
    reasons: list[str] = field(default_factory=list)

    @property
    def plain_select(self) -> bool:
        return not self.reasons


class _Walk(Visitor):
    def __init__(self) -> None:
        self.dml: set[str] = set()
        self.locking = self.into = False
        self.functions: set[str] = set()

    def visit(self, ancestors, node):  # noqa: ANN001 - pglast's visitor protocol
        if type(node) in _DML:
            self.dml.add(_DML[type(node)])
        elif isinstance(node, ast.LockingClause):
            self.locking = True
        elif isinstance(node, ast.IntoClause):
            self.into = True
        elif isinstance(node, ast.FuncCall):
            self.functions.add(node.funcname[-1].sval.lower())


def analyze_effects(conn: psycopg.Connection, statement: str) -> AnalyzeEffects:
    """Is ``statement`` a plain SELECT, safe to run for real? Parsed with PostgreSQL's own
    parser (pglast), and every statement the parser finds is judged (several are refused
    before anything runs anyway): DML (also inside WITH), FOR UPDATE/SHARE, SELECT INTO, and
    calls to VOLATILE functions (nextval, pg_terminate_backend, dblink, user functions …) are
    effects that a rollback does not fully undo (row locks are held while it runs; sequences,
    signals and remote writes stay)."""
    try:
        found = parse_statements(statement)
    except StudyhubError as exc:
        return AnalyzeEffects("?", [f"cannot be parsed ({exc}), so it may change data"])
    reasons = []
    if len(found) > 1:
        reasons.append(f"{len(found)} statements: every one of them would run")
    functions: set[str] = set()
    for stmt in found:
        walk = _Walk()
        walk(stmt.node)
        functions |= walk.functions
        if type(stmt.node) in _DML:
            reasons.append(f"{stmt.kind} is not a plain SELECT: it runs for real and holds "
                           "its row locks until the rollback")
        elif not isinstance(stmt.node, ast.SelectStmt):
            reasons.append(f"{stmt.kind} is not a plain SELECT: it runs for real")
        elif walk.dml:
            reasons.append(f"a data-modifying WITH ({', '.join(sorted(walk.dml))}) runs for "
                           "real and holds its row locks until the rollback")
        if walk.locking:
            reasons.append("FOR UPDATE/SHARE locks the rows it reads until the rollback")
        if walk.into:
            reasons.append("SELECT INTO / CREATE … AS creates a table (rolled back)")
    names = sorted(functions - HARMLESS_VOLATILE)
    if names:
        volatile = [r[0] for r in conn.execute(load("get_volatile_functions"),
                                               {"names": names}).fetchall()]
        if not conn.autocommit:
            conn.rollback()
        if volatile:
            reasons.append(f"calls volatile function(s) {', '.join(volatile)}: what they do "
                           "(sequence values, signals, remote writes) is not rolled back")
    kind = "; ".join(s.kind for s in found) or "?"
    return AnalyzeEffects(kind, reasons)


def _interval(value: str) -> str:
    return parse_timeout(value, max_s=3600)


def explain_statement(conn: psycopg.Connection, statement: str, *, analyze: bool = False,
                      timeout: str = "30s", lock_timeout: str = "2s",
                      as_json: bool = False, allow_effects: bool = False,
                      profile: Profile | None = None) -> ExplainResult:
    """EXPLAIN (optionally ANALYZE, BUFFERS) ``statement`` in a transaction that is rolled back
    whatever happens. ANALYZE of anything but a plain SELECT (see ``analyze_effects``) runs it
    for real: refused unless ``allow_effects`` (the caller confirmed it) with the ``profile``,
    whose rule for changes applies (``Profile.require_changes_allowed``) and under whose name
    the run is audited (``diag.explain.analyze``) however it ends."""
    if allow_effects and profile is None:
        raise ValueError("allow_effects needs the profile: the run is audited under its name")
    stmt = explainable(statement, analyze=analyze)
    effects = analyze_effects(conn, stmt.text) if analyze else None
    if effects is None or effects.plain_select:
        return _explain(conn, stmt, analyze=analyze, timeout=timeout, lock_timeout=lock_timeout,
                        as_json=as_json)
    if not allow_effects or profile is None:
        raise RefusedError(f"refusing EXPLAIN ANALYZE without confirmation: "
                           f"{'; '.join(effects.reasons)} (nothing was run)")
    profile.require_changes_allowed(f"run this {effects.kind} for real under EXPLAIN ANALYZE "
                                    "(rolled back afterwards)")
    # The error's type only: a message about the statement may quote its literals.
    with audited("diag.explain.analyze", profile.name, error_text=False,
                 database=conn.info.dbname, statement_kind=effects.kind,
                 effects=len(effects.reasons)):
        return _explain(conn, stmt, analyze=analyze, timeout=timeout, lock_timeout=lock_timeout,
                        as_json=as_json)


def _explain(conn: psycopg.Connection, stmt: Statement, *, analyze: bool, timeout: str,
             lock_timeout: str, as_json: bool) -> ExplainResult:
    """``explain_statement``'s run, once the statement is judged."""
    # One run in JSON serves both outputs (the text form is rendered from it).
    options = sql.SQL(", ").join(
        [sql.SQL("FORMAT JSON")] + ([sql.SQL("ANALYZE"), sql.SQL("BUFFERS")] if analyze else []))
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                sql.Literal(_interval(timeout))))
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(_interval(lock_timeout))))
            if stmt.has_placeholders:
                plan_json = generic_plan(conn, stmt, options)
            else:
                plan_json = execute_extended(
                    conn, sql.SQL("EXPLAIN ({}) ").format(options) + sql.SQL(stmt.text)
                ).fetchone()[0]
    except psycopg.errors.QueryCanceled:
        raise StudyhubError(f"the statement ran longer than {timeout} (statement_timeout); "
                            "nothing was changed") from None
    except psycopg.errors.LockNotAvailable:
        raise StudyhubError(f"waited more than {lock_timeout} for a lock; nothing was changed") from None
    except psycopg.Error as exc:
        raise StudyhubError(f"cannot explain that statement: {first_line(exc)}") from None
    top = plan_json[0]
    node = top["Plan"]
    return ExplainResult(
        statement=stmt.text, analyze=analyze, generic=stmt.has_placeholders,
        total_cost=node.get("Total Cost"),
        actual_ms=top.get("Execution Time"),
        plan=plan_json if as_json else render_text(plan_json))


def generic_plan(conn: psycopg.Connection, stmt: Statement, options: sql.Composable,
                 name: str = "studyhub_explain") -> Any:
    """Plan a statement with $n placeholders generically: PREPARE it (on the extended protocol:
    one statement only), force the generic plan, EXPLAIN EXECUTE with NULL for every
    parameter. Call inside a transaction."""
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    ident = sql.Identifier(name)
    execute_extended(conn, sql.SQL("PREPARE {} AS ").format(ident) + sql.SQL(stmt.text))
    try:
        nparams = conn.execute(load("get_prepared_statement_parameters"),
                               {"name": name}).fetchone()[0]
        args = sql.SQL(", ").join([sql.NULL] * nparams)
        q = sql.SQL("EXPLAIN ({}) EXECUTE {}").format(options, ident)
        if nparams:
            q = q + sql.SQL("(") + args + sql.SQL(")")
        return conn.execute(q).fetchone()[0]
    finally:
        conn.execute(sql.SQL("DEALLOCATE {}").format(ident))


def render_text(plan_json: Any) -> list[str]:
    """EXPLAIN's text layout from its JSON form (so one run serves both)."""
    lines: list[str] = []
    top = plan_json[0]

    def walk(node: dict, depth: int) -> None:
        pad = "  " * depth + ("->  " if depth else "")
        what = node["Node Type"]
        if what == "ModifyTable":
            what = node.get("Operation", what)
        if "Relation Name" in node:
            what += f" on {node['Relation Name']}"
            if node.get("Alias") and node["Alias"] != node["Relation Name"]:
                what += f" {node['Alias']}"
        if "Index Name" in node:
            what += f" using {node['Index Name']}"
        est = f"(cost={node['Startup Cost']:.2f}..{node['Total Cost']:.2f} rows={node['Plan Rows']} " \
              f"width={node['Plan Width']})"
        act = ""
        if "Actual Total Time" in node:
            act = f" (actual time={node['Actual Startup Time']:.3f}..{node['Actual Total Time']:.3f} " \
                  f"rows={node['Actual Rows']} loops={node['Actual Loops']})"
        lines.append(f"{pad}{what}  {est}{act}")
        for key in ("Index Cond", "Recheck Cond", "Filter", "Hash Cond", "Merge Cond",
                    "Join Filter", "Sort Key"):
            if key in node:
                val = node[key] if not isinstance(node[key], list) else ", ".join(node[key])
                lines.append(f"{'  ' * depth}      {key}: {val}")
        if "Rows Removed by Filter" in node:
            lines.append(f"{'  ' * depth}      Rows Removed by Filter: {node['Rows Removed by Filter']}")
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(top["Plan"], 0)
    if "Planning Time" in top:
        lines.append(f"Planning Time: {top['Planning Time']:.3f} ms")
    if "Execution Time" in top:
        lines.append(f"Execution Time: {top['Execution Time']:.3f} ms")
    return lines
