"""SQL text that came from a person (``diag explain``) or from pg_stat_statements (the
dashboard's EXPLAIN page, ``diag advise``): read by PostgreSQL's own parser (pglast), never
split by hand, and sent on the extended query protocol, where the server itself runs at most
one statement.

Two independent lines of defence, both always used:

1. ``one_statement`` parses the text and refuses zero or several statements (a ``commit;``
   hidden behind a ``$`` in an identifier or an ``E'\\''`` string is a second statement to
   PostgreSQL's parser, whatever a hand-written splitter thinks).
2. ``execute_extended`` sends the query that carries the text so that the server refuses a
   second command ("cannot insert multiple commands into a prepared statement") even if the
   parse check were wrong or skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pglast
import psycopg
from pglast import ast
from pglast.visitors import Visitor

from studyhub.errors import RefusedError, StudyhubError

# Statement kinds whose pglast class name does not say it the way PostgreSQL's docs do.
_KIND_NAMES = {
    ast.CreatedbStmt: "CREATE DATABASE", ast.DropdbStmt: "DROP DATABASE",
    ast.VariableSetStmt: "SET", ast.VariableShowStmt: "SHOW", ast.RuleStmt: "CREATE RULE",
    ast.IndexStmt: "CREATE INDEX", ast.ViewStmt: "CREATE VIEW", ast.CreateStmt: "CREATE TABLE",
    ast.CopyStmt: "COPY", ast.DoStmt: "DO", ast.CallStmt: "CALL", ast.PrepareStmt: "PREPARE",
    ast.DeallocateStmt: "DEALLOCATE", ast.DeclareCursorStmt: "DECLARE",
    ast.ClusterStmt: "CLUSTER", ast.ReindexStmt: "REINDEX", ast.LockStmt: "LOCK",
    ast.TruncateStmt: "TRUNCATE", ast.GrantStmt: "GRANT", ast.GrantRoleStmt: "GRANT",
    ast.RefreshMatViewStmt: "REFRESH MATERIALIZED VIEW", ast.CheckPointStmt: "CHECKPOINT",
}


def statement_kind(node: ast.Node) -> str:
    """The command's name as PostgreSQL spells it: SELECT, DELETE, CREATE TABLE AS, COMMIT,
    DROP TABLE, VACUUM …"""
    if isinstance(node, ast.SelectStmt):
        return "SELECT INTO" if node.intoClause else "SELECT"
    if isinstance(node, ast.CreateTableAsStmt):
        return ("CREATE MATERIALIZED VIEW AS" if node.objtype.name == "OBJECT_MATVIEW"
                else "CREATE TABLE AS")
    if isinstance(node, ast.TransactionStmt):  # BEGIN, COMMIT, ROLLBACK, SAVEPOINT …
        return node.kind.name.removeprefix("TRANS_STMT_").replace("_", " ")
    if isinstance(node, ast.DropStmt):
        return "DROP " + node.removeType.name.removeprefix("OBJECT_").replace("_", " ")
    if isinstance(node, ast.VacuumStmt):
        return "VACUUM" if node.is_vacuumcmd else "ANALYZE"
    if type(node) in _KIND_NAMES:
        return _KIND_NAMES[type(node)]
    words = re.findall(r"[A-Z][a-z]*", type(node).__name__.removesuffix("Stmt"))
    return " ".join(words).upper()


class SQLParseError(StudyhubError):
    """PostgreSQL's parser cannot read the text; ``parser_message`` is its own message."""

    def __init__(self, parser_message: str) -> None:
        super().__init__(f"PostgreSQL's parser cannot read that SQL: {parser_message} "
                         "(nothing was run)")
        self.parser_message = parser_message

    @property
    def incomplete(self) -> bool:
        """The text ends inside a statement (an open string, comment or body), rather than
        being wrong where it stops."""
        return self.parser_message.startswith("unterminated") or \
            self.parser_message.endswith("at end of input")


class _Params(Visitor):
    def __init__(self) -> None:
        self.found = False

    def visit_ParamRef(self, ancestors, node) -> None:  # noqa: ANN001 - pglast's protocol
        self.found = True


@dataclass(frozen=True)
class Statement:
    """One statement as PostgreSQL's parser read it."""

    text: str  # its own text: no surrounding whitespace, no trailing semicolon
    node: ast.Node  # its parse tree (pglast)
    kind: str  # see statement_kind
    terminated: bool = True  # ended by a semicolon (the last one of a text may not be)

    @property
    def has_placeholders(self) -> bool:
        """Does it use ``$n`` parameters (as pg_stat_statements normalizes constants)?"""
        params = _Params()
        params(self.node)
        return params.found


def parse_statements(text: str) -> list[Statement]:
    """Every statement PostgreSQL's parser finds in ``text``, with its own text. Unparseable
    text is refused with the parser's message."""
    if "\x00" in text:
        raise StudyhubError("SQL text cannot contain a NUL character (nothing was run)")
    try:
        raws = pglast.parse_sql(text)
    except UnicodeEncodeError:
        raise StudyhubError("the SQL text is not valid UTF-8 (nothing was run)") from None
    except pglast.parser.ParseError as exc:
        raise SQLParseError(exc.args[0]) from None
    out = []
    for raw in raws:
        # libpg_query reports stmt_location/stmt_len as byte offsets into the UTF-8 text;
        # pglast's parse_sql turns them into indexes of ``text``'s characters (its
        # Displacements), so a str slice is right also for non-ASCII text. stmt_len 0 means
        # "to the end"; the slice never includes the terminating semicolon.
        start = raw.stmt_location
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        out.append(Statement(text[start:end].strip(), raw.stmt, statement_kind(raw.stmt),
                             terminated=bool(raw.stmt_len)))
    return out


def one_statement(text: str) -> Statement:
    """Exactly one statement, or a refusal naming what was found (nothing is run)."""
    found = parse_statements(text)
    if not found:
        raise StudyhubError("no SQL statement given (nothing was run)")
    if len(found) > 1:
        kinds = ", ".join(s.kind for s in found)
        raise RefusedError(f"refusing {len(found)} statements ({kinds}): give exactly one "
                           "(nothing was run)")
    return found[0]


def execute_extended(conn: psycopg.Connection, query: Any) -> psycopg.Cursor:
    """Run ``query`` — any query that carries SQL text from a person or from
    pg_stat_statements (``EXPLAIN …``, ``PREPARE … AS …``) — on PostgreSQL's extended query
    protocol, where the server itself refuses a second statement ("cannot insert multiple
    commands into a prepared statement").

    Why binary: psycopg 3 (``psycopg/_cursor_base.py``, ``_execute_send``) sends a query
    without parameters on the simple query protocol, which runs every statement in the string
    — a ``commit;`` hidden in the text would end our rolled-back transaction and whatever
    follows would run for real. It uses the extended protocol only when the query has
    parameters, when binary results are asked for, or when it is prepared; ``prepare=True``
    is ignored on connections with ``prepare_threshold=None`` (pooled ones), so binary results
    are the switch that always holds. Check the text with ``one_statement`` first: this is
    the second, independent line of defence, not the only one."""
    return conn.execute(query, binary=True)

