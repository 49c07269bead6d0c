"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
dashboard server (uvicorn, in a thread) on the session cluster, in a database of its own with
seeded data (studyhub.ops.seed), a running workload, an invalid index, a blocked query and a
pg_sleep session planted by the test. Screenshots of every page go to artifacts/screenshots/."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from studyhub.serving import DashboardSettings
from studyhub.ops import capture, migrate, seed
from tests.conftest import connect_as
from tests.dashboard_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DashboardServer,
    Workload,
)
from tests.diag_helpers import Background, is_running, is_waiting_for_lock, wait_for

try:
    from playwright import sync_api as playwright_api
except ImportError:  # named by the mark below
    playwright_api = None

MISSING = [what for what, there in (
    ("the Python package playwright (scripts/uv sync --frozen)", playwright_api is not None),
    (f"Chromium at {CHROMIUM} (scripts/bootstrap.sh --tests installs Debian's)",
     os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
) if not there]
# skipped without a browser on a developer's machine; a failure in CI (tests/conftest.py)
pytestmark = pytest.mark.needs(not MISSING, "the browser tests need " + " and ".join(MISSING))

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def world(cluster, migrated, tmp_path_factory):
    """A migrated database with data, history, an invalid index, a blocked UPDATE and a
    workload; the dashboard serving it; a browser."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDYHUB_CONFIG", str(tmp_path_factory.mktemp("cfg") / "absent.toml"))
    mp.setenv("STUDYHUB_SECRETS_FILE", str(tmp_path_factory.mktemp("sec") / "absent.toml"))
    db = f"dash_{uuid.uuid4().hex[:8]}"
    cluster.create_database(db)
    holder = waiter = None
    try:
        migrate.upgrade(migrated, database=db)
        seed.seed_database(migrated, students=200, database=db)
        with connect_as(migrated, "app", db) as c:  # a failed concurrent build leaves it invalid
            with pytest.raises(Exception, match="could not create unique index"):
                c.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_notes_subject_unique "
                          "ON notes (subject_id)")
        holder = connect_as(migrated, "app", db, autocommit=False, application_name="holder")
        holder.execute("UPDATE subjects SET name = name || '' WHERE code = (SELECT min(code) "
                       "FROM subjects)")
        waiter = Background(migrated, "UPDATE subjects SET name = name WHERE code = (SELECT "
                            "min(code) FROM subjects)",
                            database=db, setup=["SET application_name = 'waiter'"])
        wait_for(lambda: is_waiting_for_lock(migrated, waiter.pid), what="the planted waiter")
        settings = DashboardSettings(database=db)
        with Workload(migrated, db) as workload, DashboardServer(settings) as server:
            for rounds in (0, 10, 20):  # history: a baseline and two intervals of work
                wait_for(lambda n=rounds: workload.rounds >= n, what="the workload")
                capture.capture_snapshots(migrated, database=db)  # the agent's capture job
            with playwright_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                yield {"db": db, "server": server, "page": page, "holder": holder,
                       "waiter": waiter, "profile": migrated}
                browser.close()
    finally:
        if waiter is not None:
            waiter.close()
        if holder is not None:
            holder.close()
        cluster.drop_database(db)
        mp.undo()


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def visit(page, url: str, expect: int = 200):
    response = page.goto(url)
    assert response is not None and response.status == expect, (url, response and response.status)
    body = page.content()
    assert "Traceback" not in body and "Internal Server Error" not in body
    return response


def test_every_page_loads_with_the_profile_switcher_and_is_saved_as_a_screenshot(world):
    page, base = world["page"], world["server"].url
    for name, path in (("profiles", "/"), ("overview", "/p/local/"),
                       ("queries", "/p/local/queries"), ("indexes", "/p/local/indexes"),
                       ("indexes-advice", "/p/local/indexes?advise=1"),
                       ("live", "/p/local/live"), ("space", "/p/local/space"),
                       ("backups", "/p/local/backups"), ("privacy", "/p/local/privacy")):
        visit(page, base + path)
        assert page.locator("nav.profiles a.profile").count() == 3
        assert page.locator("main h1").count() >= 1
        assert shot(page, name).stat().st_size > 10_000
    # a profile that does not resolve: its error, in the page, with the switcher working
    visit(page, base + "/p/staging/", expect=503)
    assert "STUDYHUB_STAGING_HOST" in page.inner_text("main")
    assert page.locator("nav.profiles a.profile").count() == 3
    shot(page, "staging-not-configured")
    # the query page: the workload's statement, its history chart and a safe EXPLAIN
    visit(page, base + "/p/local/queries?sort=calls")
    page.locator("table.queries a", has_text="FROM flashcards WHERE student_id").first.click()
    page.wait_for_load_state()
    assert page.locator("figure.chart svg polyline").count() >= 1  # calls/min over time
    shot(page, "query")
    page.get_by_text("EXPLAIN (estimate, rolled back)").click()
    page.wait_for_load_state()
    assert "generic plan" in page.inner_text("main")
    assert "Scan" in page.inner_text("pre.plan")
    shot(page, "explain")


def test_overview_shows_the_planted_invalid_index_and_blocked_query(world):
    page = world["page"]
    visit(page, world["server"].url + "/p/local/")
    invalid = page.locator("#check-invalid_indexes")
    assert invalid.locator(".status").inner_text().lower() == "warn"
    items = page.locator("table.items[data-check=invalid_indexes]").inner_text()
    assert "ix_notes_subject_unique" in items
    blocked = page.locator("table.items[data-check=blocked_queries]").inner_text()
    assert str(world["waiter"].pid) in blocked
    assert str(world["holder"].info.backend_pid) in blocked  # its blocked_by
    shot(page, "overview-planted")
    # the live page shows the same pair as a tree: the holder at the root
    visit(page, world["server"].url + "/p/local/live")
    tree = page.locator("ul.tree").inner_text()
    assert f"{world['holder'].info.backend_pid} " in tree and "root blocker" in tree
    assert str(world["waiter"].pid) in tree


def test_terminating_a_planted_sleep_from_the_live_page_ends_that_backend(world):
    page, prof, db = world["page"], world["profile"], world["db"]
    sleeper = Background(prof, "SELECT pg_sleep(300) /* planted sleeper */", database=db)
    try:
        wait_for(lambda: is_running(prof, sleeper.pid, "pg_sleep"), what="the sleeper")
        visit(page, world["server"].url + "/p/local/live")
        row = page.locator(f"#session-{sleeper.pid}")
        assert "pg_sleep(300)" in row.inner_text()
        row.locator("a[data-action=terminate]").click()
        page.wait_for_load_state()
        assert f"Terminate PID {sleeper.pid}" in page.inner_text("main h1")
        shot(page, "confirm-terminate")
        assert is_running(prof, sleeper.pid, "pg_sleep")  # the confirmation page did nothing
        page.locator("button#confirm").click()
        page.wait_for_load_state()
        assert f"terminate {sleeper.pid}: terminated" in page.inner_text(".flash.ok")
        with connect_as(prof, "admin") as c:
            gone = c.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                             (sleeper.pid,)).fetchone()[0]
        assert gone == 0
        shot(page, "live-after-terminate")
    finally:
        sleeper.close()


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(world):
    page, prof, db = world["page"], world["profile"], world["db"]
    sleeper = Background(prof, "SELECT pg_sleep(300) /* must survive */", database=db)
    try:
        wait_for(lambda: is_running(prof, sleeper.pid, "pg_sleep"), what="the sleeper")
        url = f"{world['server'].url}/p/local/live/terminate/{sleeper.pid}"
        visit(page, url)  # the browser has a session (cookie); only the token is missing
        for form in ({}, {"csrf_token": "not-the-token"}):
            response = page.request.post(url, form=form, max_redirects=0)
            assert response.status == 403, response.status
            assert "CSRF" in response.text()
        time.sleep(0.3)
        assert is_running(prof, sleeper.pid, "pg_sleep")
    finally:
        sleeper.close()


def test_create_index_concurrently_from_the_page_with_progress(world):
    page, prof, db = world["page"], world["profile"], world["db"]
    base = world["server"].url
    world["holder"].rollback()  # its open transaction would make the build wait
    # a snapshot of our own holds the build in a phase it cannot leave on its own, so the job
    # page must show it (no race with a build quicker than the page's refresh)
    reader = connect_as(prof, "app", db, autocommit=False)
    try:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM subjects")
        visit(page, f"{base}/p/local/indexes/create?table=public.notes"
                    "&columns=subject_id,created_at")
        assert "CREATE INDEX CONCURRENTLY" in page.inner_text("pre.sql")
        page.locator("button#confirm").click()
        page.wait_for_url("**/jobs/*")
        page.wait_for_selector("#job[data-state=running] >> text=phase: waiting for old snapshots",
                               timeout=60_000)
        shot(page, "index-build-progress")
    finally:
        reader.rollback()
        reader.close()
    page.wait_for_selector("#job[data-state=done], #job[data-state=failed]", timeout=60_000)
    assert page.locator("#job").get_attribute("data-state") == "done", page.inner_text("main")
    assert "valid=True" in page.inner_text("main")
    shot(page, "index-build-done")
    with connect_as(prof, "app", db) as c:
        valid = c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                          "'ix_notes_subject_id_created_at'::regclass").fetchone()[0]
    assert valid is True


def teardown_module() -> None:
    # keep the screenshots (artifacts/ is git-ignored); remove a stale empty directory only
    if SCREENSHOTS.exists() and not any(SCREENSHOTS.iterdir()):
        shutil.rmtree(SCREENSHOTS)
