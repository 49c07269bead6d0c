"""diag indexes and create-index: invalid, duplicate, unused, missing, FK without index; a safe
CREATE INDEX CONCURRENTLY that cleans up after itself."""

from __future__ import annotations

import pytest
from psycopg.rows import dict_row

from studyhub.ops import indexes
from tests.conftest import connect_as
from tests.diag_helpers import as_json, wait_for


@pytest.fixture
def orders_db(profile, fresh_db):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE customers (id int PRIMARY KEY, region int)")
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, "
                  "status int, note text)")
        c.execute("INSERT INTO customers SELECT g, g % 10 FROM generate_series(1, 1000) g")
        c.execute("INSERT INTO orders SELECT g, 1 + g % 1000, g % 7, 'n' "
                  "FROM generate_series(1, 30000) g")
        c.execute("ANALYZE")
    return fresh_db


def _report(cli, db):
    return as_json(cli("diag", "indexes", "-d", db, "--json"))


def test_foreign_key_without_index_is_found_with_its_fix(profile, orders_db, cli):
    fks = _report(cli, orders_db)["foreign_keys_without_index"]
    assert [(f["table"], f["columns"]) for f in fks] == [("orders", ["customer_id"])]
    assert fks[0]["fix_sql"] == ('CREATE INDEX CONCURRENTLY "ix_orders_customer_id" ON '
                                 '"public"."orders" ("customer_id");')
    with connect_as(profile, "app", orders_db) as c:
        c.execute(fks[0]["fix_sql"])
    assert _report(cli, orders_db)["foreign_keys_without_index"] == []


def test_duplicate_and_unused_indexes_are_found(profile, orders_db, cli):
    with connect_as(profile, "app", orders_db) as c:
        c.execute("CREATE INDEX ix_status ON orders (status)")
        c.execute("CREATE INDEX ix_status_customer ON orders (status, customer_id)")
        c.execute("CREATE INDEX ix_used ON orders (customer_id)")
        c.execute("SET enable_seqscan = off")
        c.execute("SELECT count(*) FROM orders WHERE customer_id = 5")
    report = wait_for(lambda: (r := _report(cli, orders_db)) and
                      "ix_used" not in {f["index"] for f in r["unused"]} and r,
                      what="index statistics to be flushed")
    dup = report["duplicate"]
    assert [(d["index"], d["covered_by"]) for d in dup] == [("ix_status", "ix_status_customer")]
    assert dup[0]["fix_sql"] == 'DROP INDEX CONCURRENTLY "public"."ix_status";'
    unused = {f["index"] for f in report["unused"]}
    assert {"ix_status", "ix_status_customer"} <= unused
    assert "customers_pkey" not in unused  # a primary key enforces something: never "unused"
    assert "ix_used" not in unused
    res = cli("diag", "doctor", "-d", orders_db, "--check", "duplicate_indexes", "--check",
              "unused_indexes", "--set", "unused_indexes.min_bytes=0", "--json")
    checks = {c["name"]: c for c in as_json(res)["checks"]}
    assert checks["duplicate_indexes"]["status"] == "warn"
    # statistics a few minutes old: candidates listed, not judged (every index looks unused
    # right after a restart, a restore or a bulk load)
    assert checks["unused_indexes"]["status"] == "ok"
    assert "not judged" in checks["unused_indexes"]["value"]
    assert "ix_status" in {i["index"] for i in checks["unused_indexes"]["items"]}
    res = cli("diag", "doctor", "-d", orders_db, "--check", "unused_indexes", "--set",
              "unused_indexes.min_bytes=0", "--set", "unused_indexes.min_window_s=0", "--json")
    unused_check = as_json(res)["checks"][0]
    assert unused_check["status"] == "warn" and "DROP INDEX CONCURRENTLY" in unused_check["fix"]
    assert "ix_status" in {i["index"] for i in unused_check["items"]}


def test_the_only_index_behind_a_foreign_key_is_never_called_unused(profile, orders_db, cli):
    with connect_as(profile, "app", orders_db) as c:
        c.execute("CREATE INDEX ix_orders_customer_id ON orders (customer_id)")
    report = _report(cli, orders_db)
    assert "ix_orders_customer_id" not in {f["index"] for f in report["unused"]}
    with connect_as(profile, "app", orders_db) as c:  # a second one makes the first droppable
        c.execute("CREATE INDEX ix_orders_customer_id_status ON orders (customer_id, status)")
    report = _report(cli, orders_db)
    assert {"ix_orders_customer_id", "ix_orders_customer_id_status"} <= {
        f["index"] for f in report["unused"]}
    assert report["duplicate"][0]["index"] == "ix_orders_customer_id"


def test_failed_concurrent_index_is_reported_invalid(profile, orders_db, cli):
    with connect_as(profile, "app", orders_db) as c:
        with pytest.raises(Exception, match="could not create unique index"):
            c.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_status_unique ON orders (status)")
    report = _report(cli, orders_db)
    invalid = report["invalid"]
    assert [i["index"] for i in invalid] == ["ix_status_unique"]
    assert invalid[0]["fix_sql"].startswith('DROP INDEX CONCURRENTLY "public"."ix_status_unique";')
    assert "CREATE UNIQUE INDEX CONCURRENTLY ix_status_unique" in invalid[0]["fix_sql"]
    res = cli("diag", "doctor", "-d", orders_db, "--check", "invalid_indexes", "--json")
    assert as_json(res)["checks"][0]["status"] == "warn" and res.exit_code == 1


def test_table_with_heavy_sequential_scans_is_reported_missing_an_index(profile, orders_db, cli):
    with connect_as(profile, "app", orders_db) as c:
        for i in range(20):
            c.execute("SELECT count(*) FROM orders WHERE customer_id = %s", (i,))
    missing = wait_for(lambda: [m for m in _report(cli, orders_db)["missing"]
                                if m["table"] == "orders"], what="seq scan statistics")
    assert missing[0]["details"]["seq_scan"] >= 20
    assert "diag advise" in missing[0]["details"]["hint"] and missing[0]["fix_sql"] is None
    advised = as_json(cli("diag", "indexes", "-d", orders_db, "--advise", "--json"))
    orders = next(m for m in advised["missing"] if m["table"] == "orders")
    assert orders["fix_sql"] == ('CREATE INDEX CONCURRENTLY "ix_orders_customer_id" ON '
                                 '"public"."orders" ("customer_id");')
    assert orders["details"]["advised"][0]["columns"] == ["customer_id"]


def test_create_index_builds_concurrently_and_verifies(profile, orders_db, cli):
    res = cli("diag", "create-index", "orders", "status", "customer_id", "-d", orders_db, "--yes",
              "--json")
    assert res.exit_code == 0, res.stderr
    built = as_json(res)
    assert built["index"] == "ix_orders_status_customer_id" and built["is_valid"] and built["is_ready"]
    assert built["statement"].startswith("CREATE INDEX CONCURRENTLY")
    res = cli("diag", "create-index", "orders", "status", "customer_id", "-d", orders_db, "--yes")
    assert "already exists" in res.stdout
    res = cli("diag", "create-index", "orders", "nope", "-d", orders_db, "--yes")
    assert res.exit_code == 1 and "has no column(s) nope" in res.stderr


def test_create_index_that_cannot_finish_drops_its_invalid_leftover(profile, orders_db):
    import threading

    writer = connect_as(profile, "app", orders_db, autocommit=False)
    writer.execute("INSERT INTO orders VALUES (999999, 1, 1, 'open transaction')")
    # the build waits for this transaction and times out; the leftover's drop waits for it too,
    # so end it a little later, as the application eventually would
    ender = threading.Timer(1.5, writer.rollback)
    ender.start()
    try:
        with connect_as(profile, "app", orders_db) as conn:
            with pytest.raises(indexes.IndexBuildError, match="lock timeout") as err:
                indexes.create_index(conn, "orders", ["note"], lock_timeout="300ms", retries=0)
            assert "after dropping the invalid index it left" in str(err.value)
            left = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'ix_orders_note'"
                                ).fetchone()[0]
            assert left == 0
    finally:
        ender.join()
        writer.close()


def test_create_index_leftover_that_cannot_be_dropped_yet_is_named(profile, orders_db):
    writer = connect_as(profile, "app", orders_db, autocommit=False)
    writer.execute("INSERT INTO orders VALUES (999998, 1, 1, 'open transaction')")
    try:
        with connect_as(profile, "app", orders_db) as conn:
            with pytest.raises(indexes.IndexBuildError, match="could not be dropped") as err:
                indexes.create_index(conn, "orders", ["note"], lock_timeout="200ms", retries=0,
                                     cleanup_timeout="300ms")
            assert 'DROP INDEX CONCURRENTLY IF EXISTS "public"."ix_orders_note";' in str(err.value)
    finally:
        writer.rollback()
        writer.close()


def test_create_index_refuses_a_transaction_and_the_pooler(with_pooler, orders_db):
    profile = with_pooler.profile()
    with connect_as(profile, "app", orders_db, autocommit=False) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(indexes.RefusedError, match="inside a transaction"):
            indexes.create_index(conn, "orders", ["status"])
    import psycopg

    pooled = psycopg.connect(**profile.endpoint("pooler", orders_db).conninfo(), autocommit=True,
                             prepare_threshold=None)
    with pooled:
        with pytest.raises(indexes.RefusedError, match="transaction pooler"):
            indexes.create_index(pooled, "orders", ["status"], pooler_ports={profile.pooler_port})


# pg_stat_progress_create_index's phases of CREATE INDEX CONCURRENTLY, in the order they run
CONCURRENT_BUILD_PHASES = (
    "initializing", "waiting for writers before build", "building index",
    "waiting for writers before validation", "index validation: scanning index",
    "index validation: sorting tuples", "index validation: scanning table",
    "waiting for old snapshots",
)


def _phase_rank(phase: str) -> int:
    # "building index: scanning table", "building index: sorting live tuples", ... (per method)
    return CONCURRENT_BUILD_PHASES.index("building index" if phase.startswith("building index")
                                         else phase)


def test_create_index_reports_progress(profile, orders_db):
    """The build is held in two of its waiting phases by real sessions (a writer still in its
    transaction, a reader with its snapshot open) until the progress callback has reported each:
    no race with a build that may finish before the first poll."""
    import threading

    seen: list[indexes.BuildProgress] = []
    outcome: dict[str, object] = {}
    writer = connect_as(profile, "app", orders_db, autocommit=False)
    reader = connect_as(profile, "app", orders_db, autocommit=False)
    builder = connect_as(profile, "app", orders_db)
    build_pid = builder.info.backend_pid

    def build() -> None:
        try:
            outcome["result"] = indexes.create_index(
                builder, "orders", ["note", "status"], lock_timeout="300s", retries=0,
                monitor=lambda: connect_as(profile, "ops", orders_db),
                progress=seen.append, poll_s=0.01)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            outcome["error"] = exc

    def reported(phase: str) -> bool:
        return any(p.phase == phase for p in seen)

    thread = threading.Thread(target=build, daemon=True)
    try:
        # a writer: the build waits for its transaction before it starts
        writer.execute("INSERT INTO orders VALUES (999997, 1, 1, 'still open')")
        # a snapshot older than the build's: it waits for that before marking the index valid
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM customers")
        thread.start()
        # the upper bounds only guard against hanging; each phase lasts until it is released
        wait_for(lambda: reported("waiting for writers before build"), timeout=60,
                 what="progress to report the wait for the open writer")
        writer.commit()
        wait_for(lambda: reported("waiting for old snapshots"), timeout=60,
                 what="progress to report the wait for the old snapshot")
        # what was reported is what the server shows for the build while it is held there
        with connect_as(profile, "admin", orders_db, row_factory=dict_row) as c:
            server = c.execute(
                "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
                "FROM pg_stat_progress_create_index WHERE pid = %s", (build_pid,)).fetchone()
        assert server is not None and server["phase"] == "waiting for old snapshots"
        assert seen[-1] == indexes.BuildProgress(**server)
    finally:
        writer.rollback()
        reader.rollback()  # releases the build
        if thread.is_alive():
            thread.join(60)
        for c in (writer, reader, builder):
            c.close()
    assert not thread.is_alive(), "the build did not finish once its waits were released"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    result = outcome["result"]
    assert result.is_valid and result.is_ready and not result.already_existed
    # every report is a real phase of a concurrent build, in the order the server runs them
    ranks = [_phase_rank(p.phase) for p in seen]
    assert ranks == sorted(ranks), [p.phase for p in seen]


def test_index_bloat_is_estimated_after_mass_deletes(profile, fresh_db):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE readings (id int PRIMARY KEY, sensor int)")
        c.execute("INSERT INTO readings SELECT g, g % 100 FROM generate_series(1, 300000) g")
        c.execute("DELETE FROM readings WHERE id % 10 <> 0")
        c.execute("VACUUM ANALYZE readings")  # pages stay, the tuple count drops
    with connect_as(profile, "ops", fresh_db) as conn:
        found = {f.index: f for f in indexes.estimated_bloat(conn, min_bytes=1024**2)}
        assert "readings_pkey" in found
        assert found["readings_pkey"].details["bloat_pct"] > 70
        assert found["readings_pkey"].fix_sql == 'REINDEX INDEX CONCURRENTLY "public"."readings_pkey";'
    with connect_as(profile, "app", fresh_db) as c:
        c.execute(found["readings_pkey"].fix_sql)
    with connect_as(profile, "ops", fresh_db) as conn:
        assert "readings_pkey" not in {f.index for f in indexes.estimated_bloat(conn, min_bytes=0)}


def test_create_index_never_trusts_a_name_alone_nor_drops_someone_elses_index(
        profile, orders_db, cli):
    with connect_as(profile, "app", orders_db) as c:
        c.execute("CREATE INDEX ix_customers_region ON customers (region)")
        with pytest.raises(Exception):  # duplicates: the failed build leaves an invalid index
            c.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_unique_region ON customers (region)")
    res = cli("diag", "create-index", "orders", "status", "--name", "ix_customers_region",
              "-d", orders_db, "--yes")
    assert res.exit_code == 1 and "already exists on customers (region)" in res.stderr
    assert "nothing to do" not in res.stdout
    res = cli("diag", "create-index", "orders", "status", "--name", "ix_unique_region",
              "-d", orders_db, "--yes")
    assert res.exit_code == 1 and "ix_unique_region already exists on customers" in res.stderr
    with connect_as(profile, "app", orders_db) as c:
        kept = c.execute("SELECT i.relname, t.relname, x.indisvalid FROM pg_index x "
                         "JOIN pg_class i ON i.oid = x.indexrelid "
                         "JOIN pg_class t ON t.oid = x.indrelid "
                         "WHERE i.relname IN ('ix_customers_region', 'ix_unique_region') "
                         "ORDER BY 1").fetchall()
        assert kept == [("ix_customers_region", "customers", True),
                        ("ix_unique_region", "customers", False)]
        on_orders = c.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass "
                              "AND indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid "
                              "= 'orders'::regclass AND attname = 'status')").fetchone()[0]
        assert on_orders == 0
    # the same table and columns under that name is still "already there"
    res = cli("diag", "create-index", "customers", "region", "--name", "ix_customers_region",
              "-d", orders_db, "--yes")
    assert res.exit_code == 0 and "already exists and is valid" in res.stdout


def test_default_index_names_are_cut_as_the_server_cuts_them(migrated):
    """Names are cut to 63 bytes of UTF-8 on a character boundary (the server's NAMEDATALEN
    rule), not 63 characters: a long non-ASCII name is reported as the index will be called."""
    table, columns = "élèves_notes_de_révision", ["matière_enseignée", "durée_totale_étudiée"]
    with connect_as(migrated, "app") as conn:
        (server_name,) = conn.execute("SELECT %s::name::text",
                                      (f"ix_{table}_{'_'.join(columns)}",)).fetchone()
    assert len(server_name.encode()) <= 63
    assert indexes.index_name(table, columns) == server_name


def test_create_index_reads_the_table_name_as_postgresql_does(profile, fresh_db, cli):
    """The typed table name is read by PostgreSQL's own rules (parse_ident), not split on its
    last dot: a quoted name may hold a dot, unquoted names fold to lower case, quoted ones keep
    their case, and more than schema.table is one clear line."""
    with connect_as(profile, "app", fresh_db) as c:
        c.execute('CREATE TABLE "my.table" (id int PRIMARY KEY, v int)')
        c.execute("CREATE TABLE widgets (id int PRIMARY KEY, v int)")
        c.execute('CREATE SCHEMA "Shop"')
        c.execute('CREATE TABLE "Shop"."Orders" (id int PRIMARY KEY, v int)')
    res = cli("diag", "create-index", '"my.table"', "v", "-d", fresh_db, "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    built = as_json(res)
    assert (built["schema"], built["table"], built["index"]) == ("public", "my.table",
                                                                 "ix_my.table_v")
    res = cli("diag", "create-index", "Public.Widgets", "v", "-d", fresh_db, "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    assert (as_json(res)["schema"], as_json(res)["table"]) == ("public", "widgets")
    res = cli("diag", "create-index", '"Shop"."Orders"', "v", "-d", fresh_db, "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    assert (as_json(res)["schema"], as_json(res)["table"]) == ("Shop", "Orders")
    res = cli("diag", "create-index", "Shop.Orders", "v", "-d", fresh_db, "--yes")
    assert res.exit_code == 1 and "no table shop.orders" in res.stderr  # folded, as SQL does
    res = cli("diag", "create-index", "a.b.c", "v", "-d", fresh_db, "--yes")
    assert res.exit_code == 1 and "names 3 parts" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with connect_as(profile, "app", fresh_db) as c:
        built = c.execute("SELECT i.indexrelid::regclass::text, i.indisvalid FROM pg_index i "
                          "JOIN pg_class t ON t.oid = i.indrelid "
                          "WHERE t.relname IN ('my.table', 'widgets', 'Orders') "
                          "AND NOT i.indisprimary").fetchall()
    assert sorted(built) == [('"Shop"."ix_Orders_v"', True), ('"ix_my.table_v"', True),
                     ("ix_widgets_v", True)]


def test_a_failed_build_is_audited_and_a_refused_one_is_not(profile, orders_db, cli):
    """A build that starts writes one diag.create_index line however it ends — a failure with
    ok false and the error's type only; a request refused before anything runs (no such
    column) writes none."""
    import threading

    from tests.diag_helpers import audit_lines

    before = len(audit_lines("diag.create_index"))
    res = cli("diag", "create-index", "orders", "nope", "-d", orders_db, "--yes")
    assert res.exit_code == 1 and "has no column(s) nope" in res.stderr
    assert len(audit_lines("diag.create_index")) == before
    writer = connect_as(profile, "app", orders_db, autocommit=False)
    writer.execute("INSERT INTO orders VALUES (999996, 1, 1, 'open transaction')")
    ender = threading.Timer(1.5, writer.rollback)  # lets the invalid leftover be dropped
    ender.start()
    try:
        res = cli("diag", "create-index", "orders", "note", "-d", orders_db, "--yes",
                  "--lock-timeout", "300ms", "--retries", "0")
    finally:
        ender.join()
        writer.close()
    assert res.exit_code == 1 and "lock timeout" in res.stderr
    (line,) = audit_lines("diag.create_index")[before:]
    assert (line["outcome"], line["ok"], line["error"]) == ("failed", False, "IndexBuildError")
    assert (line["table"], line["index"], line["columns"]) == ("public.orders", "ix_orders_note",
                                                               ["note"])
    res = cli("diag", "create-index", "orders", "note", "-d", orders_db, "--yes")
    assert res.exit_code == 0, res.stderr
    line = audit_lines("diag.create_index")[-1]
    assert (line["outcome"], line["index"], line["already_existed"]) == ("ok", "ix_orders_note",
                                                                         False)
