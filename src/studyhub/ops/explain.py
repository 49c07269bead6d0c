"""``diag explain``: the plan of one statement, run safely (PgHero-style): inside a transaction
that is always rolled back, with a statement_timeout and lock_timeout, one statement only.
Statements with ``$n`` placeholders (as pg_stat_statements shows them) get a generic plan
(PREPARE + plan_cache_mode=force_generic_plan + EXPLAIN EXECUTE with NULL arguments).
Runs as the app role: planning a query needs SELECT on its tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pglast
import psycopg
from pglast import ast
from pglast.visitors import Visitor
from psycopg import sql

from studyhub.connect import first_line
from studyhub.durations import parse_timeout
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.queries import load

_PARAM = re.compile(r"\$\d+")


def _end_of_quoted(text: str, i: int) -> int:
    """Index just past the quoted literal or identifier starting at ``i`` ('' and "" escape)."""
    quote, j = text[i], i + 1
    while j < len(text):
        if text[j] == quote:
            if text[j + 1:j + 2] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return len(text)


def _end_of_block_comment(text: str, i: int) -> int:
    depth, j = 1, i + 2  # block comments nest in PostgreSQL
    while j < len(text) and depth:
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
        else:
            j += 1
    return j


def _skip(text: str, i: int) -> int | None:
    """If a quoted string, comment or dollar-quoted body starts at ``i``, the index past it."""
    c = text[i]
    if c in ("'", '"'):
        return _end_of_quoted(text, i)
    if text.startswith("--", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    if text.startswith("/*", i):
        return _end_of_block_comment(text, i)
    if c == "$":
        m = re.match(r"\$([A-Za-z_]\w*)?\$", text[i:])
        if m:
            end = text.find(m.group(0), i + len(m.group(0)))
            return len(text) if end < 0 else end + len(m.group(0))
    return None


def _meaningful(sql_text: str) -> bool:
    stripped = re.sub(r"--[^\n]*", "", sql_text)
    stripped = re.sub(r"/\*.*?\*/", "", stripped, flags=re.S)
    return bool(stripped.strip())


def split_statements(text: str) -> list[str]:
    """Split SQL on top-level semicolons, honouring quotes, comments and dollar quoting."""
    parts, start, i = [], 0, 0
    while i < len(text):
        past = _skip(text, i)
        if past is not None:
            i = past
        elif text[i] == ";":
            parts.append(text[start:i])
            start = i = i + 1
        else:
            i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if _meaningful(p)]


def one_statement(text: str) -> str:
    parts = split_statements(text)
    if not parts:
        raise StudyhubError("no SQL statement given")
    if len(parts) > 1:
        raise RefusedError(f"refusing to explain {len(parts)} statements: give exactly one "
                           "(nothing was run)")
    return parts[0]


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
    parser (pglast): DML (also inside WITH), FOR UPDATE/SHARE, SELECT INTO, and calls to
    VOLATILE functions (nextval, pg_terminate_backend, dblink, user functions …) are effects
    that a rollback does not fully undo (row locks are held while it runs; sequences, signals
    and remote writes stay)."""
    text = one_statement(statement)
    try:
        stmt = pglast.parse_sql(text)[0].stmt
    except pglast.parser.ParseError as exc:
        return AnalyzeEffects("?", [f"cannot be parsed ({exc}), so it may change data"])
    kind = re.sub(r"Stmt$", "", type(stmt).__name__).upper()
    walk = _Walk()
    walk(stmt)
    reasons = []
    if not isinstance(stmt, ast.SelectStmt):
        reasons.append(f"{kind} is not a plain SELECT: it runs for real and holds its row "
                       "locks until the rollback")
    elif walk.dml:
        reasons.append(f"a data-modifying WITH ({', '.join(sorted(walk.dml))}) runs for real "
                       "and holds its row locks until the rollback")
    if walk.locking:
        reasons.append("FOR UPDATE/SHARE locks the rows it reads until the rollback")
    if walk.into:
        reasons.append("SELECT INTO creates a table (rolled back)")
    names = sorted(walk.functions - HARMLESS_VOLATILE)
    if names:
        volatile = [r[0] for r in conn.execute(load("get_volatile_functions"),
                                               {"names": names}).fetchall()]
        if not conn.autocommit:
            conn.rollback()
        if volatile:
            reasons.append(f"calls volatile function(s) {', '.join(volatile)}: what they do "
                           "(sequence values, signals, remote writes) is not rolled back")
    return AnalyzeEffects(kind, reasons)


def _interval(value: str) -> str:
    return parse_timeout(value, max_s=3600)


def explain_statement(conn: psycopg.Connection, statement: str, *, analyze: bool = False,
                      timeout: str = "30s", lock_timeout: str = "2s",
                      as_json: bool = False, allow_effects: bool = False) -> ExplainResult:
    """EXPLAIN (optionally ANALYZE, BUFFERS) ``statement`` in a transaction that is rolled back
    whatever happens. ANALYZE of anything but a plain SELECT (see ``analyze_effects``) is
    refused unless ``allow_effects`` (the caller confirmed it)."""
    text = one_statement(statement)
    generic = bool(_PARAM.search(text))
    if generic and analyze:
        raise RefusedError("EXPLAIN ANALYZE needs real values; replace the $n placeholders")
    if analyze and not allow_effects:
        effects = analyze_effects(conn, text)
        if not effects.plain_select:
            raise RefusedError(f"refusing EXPLAIN ANALYZE without confirmation: "
                               f"{'; '.join(effects.reasons)} (nothing was run)")
    # One run in JSON serves both outputs (the text form is rendered from it).
    options = sql.SQL(", ").join(
        [sql.SQL("FORMAT JSON")] + ([sql.SQL("ANALYZE"), sql.SQL("BUFFERS")] if analyze else []))
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                sql.Literal(_interval(timeout))))
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(_interval(lock_timeout))))
            if generic:
                plan_json = generic_plan(conn, text, options)
            else:
                plan_json = conn.execute(
                    sql.SQL("EXPLAIN ({}) ").format(options) + sql.SQL(text)).fetchone()[0]
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
        statement=text, analyze=analyze, generic=generic,
        total_cost=node.get("Total Cost"),
        actual_ms=top.get("Execution Time"),
        plan=plan_json if as_json else render_text(plan_json))


def generic_plan(conn: psycopg.Connection, text: str, options: sql.Composable,
                 name: str = "studyhub_explain") -> Any:
    """Plan a statement with $n placeholders generically: PREPARE it, force the generic plan,
    EXPLAIN EXECUTE with NULL for every parameter. Call inside a transaction."""
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("PREPARE {} AS ").format(ident) + sql.SQL(text))
    try:
        nparams = conn.execute(
            "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = %s",
            (name,)).fetchone()[0]
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
