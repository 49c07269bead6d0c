"""backup import's reader of plain SQL dumps: statements as PostgreSQL's parser finds them,
COPY rows passed through as they are, and what a dump may not do."""

from __future__ import annotations

import io

import pytest

from studyhub.errors import RefusedError
from studyhub.ops.backup.import_sql import (SKIP_EXTENSION, SKIP_OWNERSHIP, SKIP_PRIVILEGES,
                                           SKIP_TRANSACTION, DumpError, PlainDump, judge)
from studyhub.ops.sqltext import one_statement

DUMP = (
    "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n"
    "SET client_encoding = 'UTF8';\n"                                                # 7
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  PERFORM 1;\n"  # 8
    "  RETURN 2;\nEND\n$$;\n"
    "CREATE FUNCTION g() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n SELECT 1;\n"      # 14
    " SELECT 2;\nEND;\n"
    "COPY public.t (a, b) FROM stdin;\n1\tx;y\n2\t\\N\n3\tend\\.\n\\.\n"               # 19
    "COPY public.\"e f\" (a) FROM stdin;\n\\.\n"                                     # 24
    "SELECT 'it''s; -- no comment' AS a; SELECT 1 -- a trailing;\n, 'ünï';\n"        # 26
    "\\unrestrict abc123\n"
)


def _read(text: str, chunk_bytes: int) -> list:
    dump = PlainDump(io.BytesIO(text.encode()), chunk_bytes=chunk_bytes)
    out: list = []
    for item in dump.items():
        if item.statement is None:
            out.append((item.line, item.meta))
            continue
        out.append((item.line, item.statement.kind, item.statement.text.splitlines()[0]))
        if item.statement.kind == "COPY":
            out.append(b"".join(dump.copy_data()))
    return out


@pytest.mark.parametrize("chunk_bytes", [1, 7, 1 << 20])  # rows and "\." across chunk ends
def test_statements_are_found_by_the_parser_and_copy_rows_pass_as_they_are(chunk_bytes):
    assert _read(DUMP, chunk_bytes) == [
        (5, "\\restrict abc123"),
        (7, "SET", "SET client_encoding = 'UTF8'"),
        (8, "CREATE FUNCTION", "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$"),
        (14, "CREATE FUNCTION", "CREATE FUNCTION g() RETURNS int LANGUAGE sql"),
        (19, "COPY", "COPY public.t (a, b) FROM stdin"),
        b"1\tx;y\n2\t\\N\n3\tend\\.\n",
        (24, "COPY", 'COPY public."e f" (a) FROM stdin'),
        b"",
        (26, "SELECT", "SELECT 'it''s; -- no comment' AS a"),
        (26, "SELECT", "SELECT 1 -- a trailing;"),
        (28, "\\unrestrict abc123"),
    ]


def test_a_dump_that_is_not_sql_stops_with_the_line():
    for text, why in (("CREATE TABLE t (a int);\nSELEC 1;\n", "line 2: syntax error"),
                      ("COPY t (a) FROM stdin;\n1\n2\n", "ends inside COPY data"),
                      ("SELECT 'open;\n", "line 1: unterminated quoted string"),
                      ("COPY t (a) FROM stdin; SELECT 1;\n1\n\\.\n", "must end its line")):
        with pytest.raises(DumpError, match=why):
            _read(text, 1 << 20)
    with pytest.raises(DumpError, match="not UTF-8"):
        list(PlainDump(io.BytesIO("SELECT 'caf\xe9';\n".encode("latin-1"))).items())


def test_judge_keeps_a_dump_inside_its_transaction_and_database():
    ok = ("CREATE TABLE public.t (a int)", "SELECT pg_catalog.set_config('search_path', '', false)",
          "SET standard_conforming_strings = on", "COPY public.t (a) FROM stdin",
          "ALTER DEFAULT PRIVILEGES FOR ROLE studyhub_app GRANT SELECT ON TABLES TO public",
          "CREATE INDEX ix ON public.t (a)", "SET client_encoding = 'UTF8'")
    for text in ok:
        assert judge(one_statement(text)) is None, text
    skipped = {"CREATE EXTENSION IF NOT EXISTS hypopg": SKIP_EXTENSION,
               "COMMENT ON EXTENSION hypopg IS 'x'": SKIP_EXTENSION,
               "ALTER TABLE public.t OWNER TO someone": SKIP_OWNERSHIP,
               "ALTER SCHEMA ops OWNER TO someone": SKIP_OWNERSHIP,
               "GRANT SELECT ON public.t TO someone": SKIP_PRIVILEGES,
               "REVOKE ALL ON SCHEMA public FROM PUBLIC": SKIP_PRIVILEGES,
               "BEGIN": SKIP_TRANSACTION, "COMMIT": SKIP_TRANSACTION}
    for text, reason in skipped.items():
        assert judge(one_statement(text)) == reason, text
    refused = ("ROLLBACK", "PREPARE TRANSACTION 'x'", "DROP DATABASE studyhub",
               "CREATE DATABASE x", "ALTER DATABASE studyhub SET work_mem = '1GB'",
               "ALTER DATABASE studyhub OWNER TO x", "COMMENT ON DATABASE studyhub IS 'x'",
               "ALTER ROLE studyhub_app PASSWORD 'x'", "ALTER ROLE CURRENT_USER SET work_mem = 1",
               "CREATE ROLE x", "DROP OWNED BY studyhub_app", "REASSIGN OWNED BY a TO b",
               "ALTER SYSTEM SET work_mem = '1GB'", "CREATE TABLESPACE s LOCATION '/tmp'",
               "SET ROLE postgres", "SET SESSION AUTHORIZATION postgres",
               "SET standard_conforming_strings = off", "SET client_encoding = 'LATIN1'",
               "COPY public.t FROM '/etc/passwd'", "COPY public.t TO PROGRAM 'id'",
               "COPY public.t TO STDOUT", "COPY public.t FROM stdin (FORMAT csv)",
               "LOAD 'auto_explain'", "CHECKPOINT")
    for text in refused:
        with pytest.raises(RefusedError):
            judge(one_statement(text))
