"""Roles mirror production: the app owns the schema, ops can watch and signal but not write."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import connect_as

APP_TABLES = ["users", "students", "notes", "flashcards", "flashcard_reviews"]


@pytest.mark.parametrize("table", APP_TABLES)
def test_ops_role_cannot_read_or_write_app_tables(migrated, table):
    with connect_as(migrated, "ops") as conn:
        for stmt in (f"SELECT * FROM {table} LIMIT 1", f"DELETE FROM {table}",
                     f"TRUNCATE {table}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)


def test_ops_role_privileges(migrated):
    with connect_as(migrated, "ops") as conn:
        flags = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, "
            "pg_has_role('pg_monitor', 'MEMBER'), pg_has_role('pg_signal_backend', 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert flags == (False, False, False, True, True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.ops_should_not (n int)")


def test_ops_sees_and_cancels_app_queries(migrated):
    """pg_monitor shows other roles' query text; pg_signal_backend lets ops cancel them."""
    app = connect_as(migrated, "app")
    app_pid = app.info.backend_pid
    import threading

    errors: list[BaseException] = []

    def sleeper():
        try:
            app.execute("SELECT pg_sleep(30) /* long app query */")
        except BaseException as exc:  # noqa: BLE001 - we assert on it below
            errors.append(exc)

    t = threading.Thread(target=sleeper)
    t.start()
    try:
        with connect_as(migrated, "ops") as ops:
            import time

            deadline = time.monotonic() + 10
            query = None
            while time.monotonic() < deadline:
                row = ops.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                                  (app_pid,)).fetchone()
                query = row[0] if row else None
                if query and "pg_sleep" in query:
                    break
                time.sleep(0.05)
            assert "long app query" in query
            assert ops.execute("SELECT pg_cancel_backend(%s)", (app_pid,)).fetchone()[0] is True
        t.join(10)
        assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled)
    finally:
        app.close()


def test_app_role_owns_schema_but_is_not_superuser(migrated):
    with connect_as(migrated, "app") as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (False,)
        owners = {r[0] for r in conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        assert owners == {"studyhub_app"}
