"""The dashboard over HTTP (a real server on loopback, real database): CSRF on every POST, access
token and Host checks, read-only and protected profiles, history and growth from stored
snapshots (stored by ``ops.capture``, the agent's capture job), and the SVG charts."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from contextlib import ExitStack

import httpx
import pytest

from studyhub.audit import read_audit
from studyhub.dashboard import charts
from studyhub.dashboard.context import view_profile
from studyhub.errors import ConfigError
from studyhub.ops import capture, migrate, space, statements
from studyhub.serving import DashboardSettings, ForwardedError, ProxyTrust
from tests.conftest import connect_as
from tests.dashboard_helpers import DashboardServer, form_fields
from tests.diag_helpers import Background, is_running, wait_for

TOKEN = "a-long-enough-dashboard-token-1234"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No developer configuration: staging and production do not resolve unless a test says."""
    monkeypatch.setenv("STUDYHUB_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("STUDYHUB_SECRETS_FILE", str(tmp_path / "absent-secrets.toml"))
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    return monkeypatch


@pytest.fixture
def client(env):
    """``client(**settings)``: an HTTP client (with its own cookie jar) of a dashboard started
    with those settings; ``.app`` is the dashboard's app."""
    with ExitStack() as stack:
        def make(**settings) -> httpx.Client:
            server = stack.enter_context(DashboardServer(DashboardSettings(**settings)))
            http = stack.enter_context(httpx.Client(base_url=server.url, timeout=30,
                                                    follow_redirects=False))
            http.app = server.app  # type: ignore[attr-defined]
            return http
        yield make


def passwords(cluster) -> dict[str, str]:
    return {line.split(":")[3]: line.split(":")[4]
            for line in cluster.passfile.read_text().splitlines()}


def point_at_local(env, cluster, migrated, name: str, **extra: str) -> None:
    """Profile ``name`` (staging/production) = the session cluster over TLS."""
    pw = passwords(cluster)
    values = {"HOST": "127.0.0.1", "PORT": str(migrated.port), "DATABASE": "studyhub",
              "SSLMODE": "require", "PASSWORD": pw["studyhub_app"],
              "OPS_PASSWORD": pw["studyhub_ops"], **extra}
    for k, v in values.items():
        env.setenv(f"STUDYHUB_{name.upper()}_{k}", v)


# ------------------------------------------------------------------ CSRF
def test_every_post_route_refuses_a_request_without_the_csrf_token(client, env, migrated):
    c = client()
    c.get("/p/local/backups")  # a session exists (cookie), so only the token is missing
    posts = [r.path for r in c.app.routes if "POST" in getattr(r, "methods", ())]
    assert {"/login", "/logout", "/p/{name}/indexes/create",
            "/p/{name}/live/{action}/{pid}"} <= set(posts)
    for path in posts:
        url = (path.replace("{name}", "local").replace("{action}", "terminate")
               .replace("{pid}", "1"))
        for data in ({}, {"csrf_token": "forged"}):
            res = c.post(url, data=data)
            assert res.status_code == 403, (url, data, res.status_code)
            assert "CSRF token missing or wrong" in res.text
        res = c.post(url, headers={"X-CSRF-Token": "forged"})
        assert res.status_code == 403


def test_a_valid_token_from_another_session_is_refused(client, env, migrated, profile):
    sleeper = Background(profile, "SELECT pg_sleep(60) /* other session */")
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        alice, mallory = client(), client()
        page = alice.get(f"/p/local/live/terminate/{sleeper.pid}")
        fields = form_fields(page.text)
        res = mallory.post(f"/p/local/live/terminate/{sleeper.pid}", data=fields)
        assert res.status_code == 403
        assert is_running(profile, sleeper.pid, "pg_sleep")
    finally:
        sleeper.close()


# ------------------------------------------------------------------ read-only, protected
def test_a_read_only_profile_shows_no_actions_and_refuses_them(client, env, cluster, migrated,
                                                                profile):
    point_at_local(env, cluster, migrated, "staging", READ_ONLY="true")
    sleeper = Background(profile, "SELECT pg_sleep(60) /* read-only target */")
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        c = client()
        live = c.get("/p/staging/live")
        assert live.status_code == 200
        assert f'id="session-{sleeper.pid}"' in live.text
        assert 'data-action="terminate"' not in live.text
        assert "profile staging is marked read-only" in live.text
        confirm = c.get(f"/p/staging/live/terminate/{sleeper.pid}")
        assert 'id="confirm"' not in confirm.text and "read-only" in confirm.text
        token = form_fields(c.get("/p/local/live/terminate/%d" % sleeper.pid).text)["csrf_token"]
        res = c.post(f"/p/staging/live/terminate/{sleeper.pid}",
                     data={"csrf_token": token, "backend_start": ""})
        assert res.status_code == 403 and "read-only" in res.text
        res = c.post("/p/staging/indexes/create", data={"csrf_token": token, "table": "notes",
                                                        "columns": "title"})
        assert res.status_code == 403
        assert is_running(profile, sleeper.pid, "pg_sleep")
        assert not [a for a in read_audit() if a["action"].startswith("emergency.")]
        indexes_page = c.get("/p/staging/indexes")
        assert "create concurrently" not in indexes_page.text
        # nor does the agent's capture job write there
        result = capture.capture_snapshots(view_profile("staging", DashboardSettings()).profile)
        assert result.notes == ["no history captured: profile staging is marked read-only"]
        assert result.skipped and not result.statements_stored and result.database is None
    finally:
        sleeper.close()


def test_production_acts_only_when_named_when_the_dashboard_starts(client, env, cluster, migrated,
                                                                   profile):
    point_at_local(env, cluster, migrated, "production")
    sleeper = Background(profile, "SELECT pg_sleep(60) /* production target */")
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        unnamed = client()
        page = unnamed.get(f"/p/production/live/terminate/{sleeper.pid}")
        assert 'id="confirm"' not in page.text
        assert "--allow-actions production" in page.text
        token = form_fields(unnamed.get(f"/p/local/live/cancel/{sleeper.pid}").text)["csrf_token"]
        res = unnamed.post(f"/p/production/live/cancel/{sleeper.pid}",
                           data={"csrf_token": token})
        assert res.status_code == 403 and is_running(profile, sleeper.pid, "pg_sleep")

        named = client(explicit_profiles=frozenset({"production"}))
        page = named.get(f"/p/production/live/cancel/{sleeper.pid}")
        assert 'id="confirm"' in page.text
        res = named.post(f"/p/production/live/cancel/{sleeper.pid}", data=form_fields(page.text))
        assert res.status_code == 303
        assert f"cancel {sleeper.pid}: cancelled" in named.get(res.headers["location"]).text
        wait_for(lambda: not is_running(profile, sleeper.pid, "pg_sleep"), what="the cancel")
        line = [a for a in read_audit() if a["action"] == "emergency.cancel"][-1]
        assert line["profile"] == "production" and line["via"] == "dashboard"
        assert line["pid"] == sleeper.pid and "query" not in line
    finally:
        sleeper.close()


def test_a_pid_that_became_another_session_is_not_signalled(client, env, migrated, profile):
    sleeper = Background(profile, "SELECT pg_sleep(60) /* reused pid */")
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        c = client()
        fields = form_fields(c.get(f"/p/local/live/terminate/{sleeper.pid}").text)
        fields["backend_start"] = "2001-01-01T00:00:00+00:00"  # what the operator confirmed
        res = c.post(f"/p/local/live/terminate/{sleeper.pid}", data=fields)
        assert "is now a different session" in c.get(res.headers["location"]).text
        assert is_running(profile, sleeper.pid, "pg_sleep")
    finally:
        sleeper.close()


# ------------------------------------------------------------------ access
def test_listening_beyond_loopback_needs_a_token_from_the_environment(env, cli):
    with pytest.raises(ConfigError, match="STUDYHUB_DASHBOARD_TOKEN"):
        DashboardSettings(host="0.0.0.0")
    res = cli("dashboard", "--host", "0.0.0.0", "--port", "1")
    assert res.exit_code == 1 and "refusing to listen on 0.0.0.0" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    env.setenv("STUDYHUB_DASHBOARD_TOKEN", "short")
    res = cli("dashboard", "--host", "0.0.0.0", "--port", "1")
    assert res.exit_code == 1 and "shorter than 16 characters" in res.stderr
    assert "short" not in res.stderr.replace("shorter", "")
    res = cli("dashboard", "--token", TOKEN)  # never on argv
    assert res.exit_code == 2


def test_with_a_token_every_page_needs_a_login_compared_in_constant_time(client, env, migrated):
    from pydantic import SecretStr

    c = client(token=SecretStr(TOKEN))
    res = c.get("/p/local/queries")
    assert res.status_code == 303 and res.headers["location"].startswith("/login?next=")
    assert c.post("/p/local/live/terminate/1", data={}).status_code == 401
    login = c.get("/login?next=/p/local/queries")
    fields = form_fields(login.text)
    assert c.post("/login", data={**fields, "token": TOKEN[:-1] + "x"}).status_code == 401
    before = c.cookies.get("studyhub_dashboard")
    res = c.post("/login", data={**fields, "token": TOKEN})
    assert res.status_code == 303 and res.headers["location"] == "/p/local/queries"
    assert c.cookies.get("studyhub_dashboard") != before  # a new session id at login
    assert c.get("/p/local/queries").status_code == 200
    assert c.post("/login", data={"token": TOKEN}).status_code == 403  # login needs CSRF too
    other = client(token=SecretStr(TOKEN))  # no open redirect after login
    fields = form_fields(other.get("/login").text)
    res = other.post("/login", data={**fields, "token": TOKEN, "next": "//evil.example/"})
    assert res.status_code == 303 and res.headers["location"] == "/"


# ------------------------------------------------------------------ login lockout
WRONG = "not-the-dashboard-token-000"


def browser(c: httpx.Client, headers: dict[str, str] | None = None
            ) -> tuple[httpx.Client, dict[str, str]]:
    """Another browser on ``c``'s dashboard (its own cookie jar, so its own session), with the
    hidden fields of its login form."""
    b = httpx.Client(base_url=c.base_url, timeout=30, follow_redirects=False,
                     headers=headers or {})
    return b, form_fields(b.get("/login").text)


def fail_logins(b: httpx.Client, fields: dict[str, str], times: int) -> None:
    for _ in range(times):
        assert b.post("/login", data={**fields, "token": WRONG}).status_code == 401


def test_failed_logins_lock_that_session_not_everyone_behind_the_same_address(client, env,
                                                                              migrated):
    from pydantic import SecretStr

    c = client(token=SecretStr(TOKEN))
    mallory, fields = browser(c)  # every browser here comes from 127.0.0.1, as behind a proxy
    fail_logins(mallory, fields, 10)
    res = mallory.post("/login", data={**fields, "token": TOKEN})
    assert res.status_code == 429 and "too many failed attempts" in res.text
    alice, fields = browser(c)
    res = alice.post("/login", data={**fields, "token": TOKEN})
    assert res.status_code == 303 and alice.get("/p/local/backups").status_code == 200
    # A client without the session cookie cannot try the token at all (no CSRF token of its
    # own), so dropping the cookie gives no extra tries.
    with httpx.Client(base_url=c.base_url, timeout=30) as bare:
        csrf = form_fields(mallory.get("/login").text)["csrf_token"]
        assert bare.post("/login", data={"csrf_token": csrf, "token": TOKEN}).status_code == 403


def test_anonymous_sessions_by_the_thousand_never_push_out_a_logged_in_one(client, env,
                                                                           migrated):
    """Every cookie-less GET makes a session; the store keeps ``max_sessions`` of them, but
    sessions that logged in are kept apart, so a flood of anonymous ones cannot log the
    operator out."""
    from pydantic import SecretStr

    c = client(token=SecretStr(TOKEN), max_sessions=5)
    fields = form_fields(c.get("/login").text)
    assert c.post("/login", data={**fields, "token": TOKEN}).status_code == 303
    for _ in range(20):  # four times the store's size in fresh anonymous sessions
        with httpx.Client(base_url=c.base_url, timeout=30) as bare:
            assert bare.get("/login").status_code == 200
    assert c.get("/p/local/backups").status_code == 200


def test_without_trusted_proxies_forwarded_headers_are_ignored(client, env, migrated):
    from pydantic import SecretStr

    c = client(token=SecretStr(TOKEN))
    for times in (4, 3, 3):  # ten failures "from 203.0.113.7", none of the sessions locked
        b, fields = browser(c, {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"})
        fail_logins(b, fields, times)
    b, fields = browser(c, {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7"})
    assert b.post("/login", data={**fields, "token": TOKEN}).status_code == 303


@pytest.mark.parametrize("header, hops", [
    ("X-Forwarded-For", "{forged}, {client}, 10.1.2.3"),
    ("Forwarded", 'for="{forged}";proto=http, for={client};proto=https, for="10.1.2.3:443"'),
])
def test_behind_trusted_proxies_failed_logins_also_lock_the_forwarded_address(
        client, env, migrated, header, hops):
    """The proxies 127.0.0.1 (the peer) and 10.0.0.0/8 (the one before it) are trusted; the
    client's address is the right-most hop that is not one of them, whatever the client put
    to its left."""
    from pydantic import SecretStr

    c = client(token=SecretStr(TOKEN), trusted_proxies=("127.0.0.1", "10.0.0.0/8"),
               forwarded_header=header)

    def via(client_address: str, forged: str) -> dict[str, str]:
        return {header: hops.format(client=client_address, forged=forged)}

    for i, times in enumerate((4, 3, 3)):  # ten failures over three sessions, each forging
        b, fields = browser(c, via("203.0.113.7", f"198.51.100.{i}"))
        fail_logins(b, fields, times)
    b, fields = browser(c, via("203.0.113.7", "192.0.2.1"))
    res = b.post("/login", data={**fields, "token": TOKEN})
    assert res.status_code == 429, res.text
    b, fields = browser(c, via("203.0.113.8", "203.0.113.7"))  # another address logs in
    assert b.post("/login", data={**fields, "token": TOKEN}).status_code == 303
    b, fields = browser(c)  # the proxy itself (no header) is never locked as an address
    assert b.post("/login", data={**fields, "token": TOKEN}).status_code == 303
    # A header the trusted proxy passes on that cannot be read: the token is not tried.
    b, fields = browser(c, {header: 'for="203.0.113.9, for=' if header == "Forwarded"
                            else "203.0.113.9, not-an-address"})
    res = b.post("/login", data={**fields, "token": TOKEN})
    assert res.status_code == 400 and "the token was not tried" in res.text


def test_audit_lines_name_the_forwarded_client_behind_trusted_proxies(client, env, migrated,
                                                                     profile):
    sleeper = Background(profile, "SELECT pg_sleep(60) /* behind a proxy */")
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        c = client(trusted_proxies=("127.0.0.1",))
        hops = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
        page = c.get(f"/p/local/live/cancel/{sleeper.pid}", headers=hops)
        res = c.post(f"/p/local/live/cancel/{sleeper.pid}", data=form_fields(page.text),
                     headers=hops)
        assert res.status_code == 303
        wait_for(lambda: not is_running(profile, sleeper.pid, "pg_sleep"), what="the cancel")
        line = [a for a in read_audit() if a["action"] == "emergency.cancel"][-1]
        assert line["pid"] == sleeper.pid and line["client"] == "203.0.113.7"
    finally:
        sleeper.close()


def test_forwarded_client_addresses_are_read_only_from_trusted_proxies():
    trust = ProxyTrust.configure(["127.0.0.1", "10.0.0.0/8", "2001:db8:1::/48"], "Forwarded")
    assert trust.client_address("192.0.2.5", ["for=203.0.113.7"]) == "192.0.2.5"  # not a proxy
    assert trust.client_address("127.0.0.1", []) is None  # the proxy's own request
    got = trust.client_address("127.0.0.1", [
        'for="_forged;, for=1.1.1.1"', 'For="[2001:DB8:CAFE::17]:4711";proto=https',
        'for="10.0.0.9:8080";by=_edge, for="[2001:db8:1::1]"'])
    assert got == "2001:db8:cafe::17"
    assert trust.client_address("127.0.0.1", ["for=_hidden42, for=10.0.0.1"]) == "_hidden42"
    assert trust.client_address("127.0.0.1", ["for=unknown, for=10.0.0.1"]) is None
    assert trust.client_address("127.0.0.1", ["for=10.0.0.1"]) is None  # only proxies
    with pytest.raises(ForwardedError, match="unreadable"):
        trust.client_address("127.0.0.1", ['for="203.0.113.9, for=10.0.0.1'])
    with pytest.raises(ForwardedError, match="unreadable"):  # a port must be quoted
        trust.client_address("127.0.0.1", ["for=203.0.113.9:80"])
    with pytest.raises(ForwardedError, match="twice"):
        trust.client_address("127.0.0.1", ["for=203.0.113.9;for=10.0.0.1"])
    xff = ProxyTrust.configure(["127.0.0.1"], "x-forwarded-for")
    assert xff.client_address("127.0.0.1", ["6.6.6.6, 203.0.113.7:5123", "127.0.0.1"]) \
        == "203.0.113.7"
    assert xff.client_address("127.0.0.1", ["2001:db8::5"]) == "2001:db8::5"
    with pytest.raises(ForwardedError, match="empty hop"):
        xff.client_address("127.0.0.1", ["203.0.113.7,"])
    assert ProxyTrust().client_address("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"
    with pytest.raises(ConfigError, match="not an IP address or network"):
        DashboardSettings(trusted_proxies=("proxy.example",))
    with pytest.raises(ConfigError, match="choose X-Forwarded-For or Forwarded"):
        DashboardSettings(trusted_proxies=("127.0.0.1",), forwarded_header="X-Real-IP")


def test_without_a_token_only_loopback_host_names_are_answered(client, env, migrated):
    c = client()
    assert c.get("/p/local/backups", headers={"Host": "evil.example:8100"}).status_code == 400
    res = c.get("/p/local/backups", headers={"Host": "localhost:8100"})
    assert res.status_code == 200
    assert c.get("/p/local/backups", headers={"Host": "[::1]:8100"}).status_code == 200
    assert "default-src 'self'" in res.headers["content-security-policy"]
    assert res.headers["x-frame-options"] == "DENY"
    cookie = res.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


# ------------------------------------------------------------------ profiles
def test_unknown_and_unresolved_profiles_do_not_break_the_pages(client, env, migrated):
    c = client()
    assert c.get("/p/nowhere/").status_code == 404
    res = c.get("/p/production/queries")
    assert res.status_code == 503
    assert "profile production has no host" in res.text
    assert res.text.count('<a class="profile') == 3  # the switcher is still there
    home = c.get("/")
    assert home.status_code == 200
    assert "not configured" in home.text and 'href="/p/local/"' in home.text


def test_the_backups_page_shows_sets_with_verification_and_age_and_the_window(
        client, env, profile, migrated_db):
    import dataclasses
    import shutil

    from studyhub.ops import backup
    from tests.conftest import make_home

    out = make_home("studyhub-dashboard-backups-")
    env.setenv("STUDYHUB_BACKUP_DIR", str(out))
    try:
        source = dataclasses.replace(profile, database=migrated_db)
        made = backup.create_backup(source, out_dir=out, jobs=1)
        (out / ".partial-local-x-20260101T000000Z-999999").mkdir()  # an interrupted run
        page = client().get("/p/local/backups").text
        row = re.search(rf"<tr><td>{made.name}</td>.*?</tr>", page, re.S).group(0)
        assert "never" in row  # not verified yet
        backup.verify_backup(out / made.name)
        page = client().get("/p/local/backups").text
        row = re.search(rf"<tr><td>{made.name}</td>.*?</tr>", page, re.S).group(0)
        assert re.search(r'class="status ok">ok</span> files, [\d.]+(ms|s) ago', row), row
        assert migrated_db in row and "zstd" in row and "<td>native</td>" in row
        assert "creation did not finish" in page  # the leftover, named as such
        assert "recoverable window:" in page  # ops.cluster: base backups and WAL archive
        assert [s.name for s in backup.list_sets(out) if s.status == "complete"] == [made.name]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_the_backups_page_shows_the_newest_sets_age_and_the_last_drills_graded(
        client, env, profile, migrated_db):
    import dataclasses
    import json
    import shutil

    from studyhub.ops import backup
    from tests.conftest import make_home

    out = make_home("studyhub-dashboard-drills-")
    env.setenv("STUDYHUB_BACKUP_DIR", str(out))
    try:
        c = client(database=migrated_db)
        page = c.get("/p/local/backups").text
        drills = re.search(r'<section id="drills">.*?</section>', page, re.S).group(0)
        assert 'class="status warn">warn</span> no complete set<' in drills  # no set yet
        assert "No restore drill of local/" in drills and "never drilled" in drills

        source = dataclasses.replace(profile, database=migrated_db)
        made = backup.create_backup(source, out_dir=out, jobs=1)
        result = backup.drill_backup(source, out, jobs=1)  # a real drill, recorded
        assert result.ok and result.recorded
        with connect_as(profile, "app", migrated_db) as conn:  # and a failed one since
            conn.execute(
                "INSERT INTO ops.backup_drills (drilled_at, profile, database, target, "
                "set_name, set_created_at, ok, duration_s, tables, rows, problems) VALUES "
                "(now(), 'local', %s, %s, %s, now(), false, 1.5, 0, 0, %s)",
                (migrated_db, str(out), made.name, ["data/public.notes.bin.zst: sha256 <b>"]))
        page = c.get("/p/local/backups").text
        age_row = re.search(rf"<tr><td>{re.escape(str(out))}</td><td>{made.name}</td>.*?</tr>",
                            page, re.S).group(0)
        assert re.search(r'class="status ok">ok</span> [\d.]+(ms|s|min)<', age_row), age_row
        check = re.search(r'<p id="drill-check">.*?</p>', page, re.S).group(0)
        assert 'class="status warn">warn<' in check and "last drill FAILED" in check
        rows = re.findall(r"<tr><td>\d{4}-\d\d-\d\d [\d:]+ UTC</td>.*?</tr>",
                          re.search(r'<table class="grid" id="drills-table">.*?</table>', page,
                                    re.S).group(0), re.S)
        assert len(rows) == 2
        assert 'class="status critical">failed<' in rows[0]
        assert "sha256 &lt;b&gt;" in rows[0]  # escaped
        assert 'class="status ok">ok<' in rows[1] and made.name in rows[1]
        assert f'<td class="num">{result.tables}</td>' in rows[1]

        manifest = json.loads((out / made.name / "manifest.json").read_text())
        manifest["started_at"] = (datetime.now(timezone.utc) - timedelta(hours=60)).isoformat()
        (out / made.name / "manifest.json").write_text(json.dumps(manifest))
        page = c.get("/p/local/backups").text
        age_row = re.search(rf"<tr><td>{re.escape(str(out))}</td><td>{made.name}</td>.*?</tr>",
                            page, re.S).group(0)
        assert re.search(r'class="status critical">critical</span> 60\.0h<', age_row), age_row
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_the_privacy_page_shows_erasure_counts_and_no_personal_data(client, env, profile,
                                                                    migrated_db):
    from studyhub.audit import write_audit
    from studyhub.ops import privacy
    from studyhub.ops.privacy import PseudonymKey
    from studyhub.ops.seed import seed_database

    seed_database(profile, students=3, database=migrated_db)
    key = PseudonymKey(b"dashboard-test-pseudonym-key-0123456789", "test")
    with connect_as(profile, "app", migrated_db, autocommit=False) as conn:
        people = conn.execute("SELECT s.id, u.email, s.full_name FROM students s "
                              "JOIN users u ON u.id = s.user_id ORDER BY s.id").fetchall()
        conn.rollback()
        erased = [privacy.erase_person(conn, key, student_id=sid) for sid, _, _ in people[:2]]
    write_audit("privacy.erase", "local", database=migrated_db, person=erased[0].pseudonym)
    with connect_as(profile, "app", migrated_db) as conn:
        audit = privacy.erasure_audit(conn)
    assert (audit.erasures, audit.ledger_present) == (2, True)
    assert audit.rows_deleted == sum(r.rows_total for r in erased) > 0

    page = client(database=migrated_db).get("/p/local/privacy").text
    assert re.search(r'id="erasure-count">2<', page)
    assert re.search(r"<td>privacy.erase</td><td class=\"num\">1</td>", page)
    assert "complete" in page  # every personal-data table has a policy
    for sid, email, name in people:
        assert str(sid) not in page and email not in page and name not in page
    for r in erased:
        assert r.pseudonym not in page


# ------------------------------------------------------------------ history and growth
@pytest.fixture
def migrated_db(fresh_db, profile):
    migrate.upgrade(profile, database=fresh_db)
    return fresh_db


def _stats(qid: int, calls: int, total_ms: float) -> statements.StatementStats:
    return statements.StatementStats(qid, "studyhub_app", "SELECT $1 /* made up */", calls,
                                     total_ms, calls, calls * 10, 0, 0.0, 0.0)


def test_statement_history_is_per_interval_and_counts_through_a_reset(client, env, profile,
                                                                      migrated_db):
    qid = 4242424242
    t0 = datetime.now(timezone.utc) - timedelta(minutes=30)
    reset_a, reset_b = t0 - timedelta(days=1), t0 + timedelta(minutes=15)
    with connect_as(profile, "ops", migrated_db) as conn:
        for minutes, calls, total, reset in ((0, 100, 200.0, reset_a), (10, 700, 800.0, reset_a),
                                             (20, 50, 500.0, reset_b)):
            assert statements.save_snapshot(conn, [_stats(qid, calls, total)], reset,
                                            t0 + timedelta(minutes=minutes)) is None
        [hist] = statements.statement_history(conn, t0 - timedelta(minutes=1), [qid])
        summed, _ = statements.stats_since(conn, t0 - timedelta(minutes=1))  # summed in SQL
        later, _ = statements.stats_since(conn, t0 + timedelta(minutes=15))  # baseline: t0+10
    assert [(p.calls, p.total_exec_ms) for p in hist.points] == [(600, 600.0), (50, 500.0)]
    assert hist.points[0].calls_per_min == pytest.approx(60.0)
    assert hist.points[1].mean_ms == pytest.approx(10.0)  # after the reset: all of it is new
    [total] = [x for x in summed if x.queryid == qid]
    assert (total.calls, total.total_exec_ms) == (650, 1100.0)
    assert [(x.calls, x.total_exec_ms) for x in later if x.queryid == qid] == [(50, 500.0)]

    c = client(database=migrated_db)
    page = c.get(f"/p/local/queries/{qid}?role=studyhub_app&window=1h")
    assert page.status_code == 200
    assert "2 intervals" in page.text and "<polyline" in page.text
    assert "Not in pg_stat_statements now" in page.text


def test_size_history_gives_growth_per_table_and_the_space_page_charts_it(client, env, profile,
                                                                          migrated_db):
    t0 = datetime.now(timezone.utc) - timedelta(hours=2)
    with connect_as(profile, "ops", migrated_db) as conn:
        for hours, notes_bytes, rows in ((0, 1024**2, 1000), (1, 3 * 1024**2, 4000)):
            made_up = space.DatabaseSpace(migrated_db, 10 * 1024**2 + notes_bytes, [
                space.TableSize("public", "notes", rows, notes_bytes, notes_bytes, 0, 0)])
            assert space.save_size_snapshot(conn, made_up, t0 + timedelta(hours=hours)) is None
        history = space.size_history(conn, t0 - timedelta(minutes=1))
    assert history.database_growth_bytes == 2 * 1024**2
    notes = next(t for t in history.tables if t.table == "notes")
    assert (notes.growth_bytes, notes.row_growth) == (2 * 1024**2, 3000)

    page = client(database=migrated_db).get("/p/local/space?window=24h")
    assert page.status_code == 200
    assert "+2.0 MB, +3,000 rows" in page.text
    assert "growth per table over the window" in page.text and "<rect" in page.text


def test_capture_snapshots_stores_both_and_says_why_when_it_cannot(env, profile, migrated_db,
                                                                   cluster):
    result = capture.capture_snapshots(profile, database=migrated_db)
    assert result.notes == [] and result.ok
    assert (result.statements_stored, result.sizes_stored, result.database) == (
        True, True, migrated_db)
    with connect_as(profile, "ops", migrated_db) as conn:
        assert statements.latest_snapshot_at(conn) == result.captured_at
        assert space.latest_size_snapshot_at(conn) == result.captured_at
        assert conn.execute("SELECT count(*) FROM ops.table_size_snapshots").fetchone()[0] > 0
    bare = "t_bare_" + migrated_db[-6:]
    cluster.create_database(bare)
    try:
        result = capture.capture_snapshots(profile, database=bare)
        assert not result.ok and not result.statements_stored and not result.sizes_stored
        assert any("ops.statement_snapshots is missing" in n for n in result.notes)
        assert any("ops.table_size_snapshots is missing" in n for n in result.notes)
    finally:
        cluster.drop_database(bare)


# ------------------------------------------------------------------ charts
def test_line_chart_scales_points_escapes_labels_and_needs_two_points():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    pts = [(t0 + timedelta(minutes=i), float(v)) for i, v in enumerate((0, 50, 100))]
    svg = str(charts.line_chart([charts.Series("<b>calls</b>", pts)], title="a & b",
                                width=264, height=150))
    coords = re.search(r'points="([^"]+)"', svg).group(1).split()
    xs = [float(c.split(",")[0]) for c in coords]
    ys = [float(c.split(",")[1]) for c in coords]
    assert xs == [64.0, 158.0, 252.0]  # left margin 64, plot width 264 - 64 - 12
    assert ys[0] == 122.0 and ys[2] == 22.0  # 0 at the bottom, the maximum (100) at the top
    assert "&lt;b&gt;calls&lt;/b&gt;" in svg and "<b>" not in svg and "a &amp; b" in svg
    one = str(charts.line_chart([charts.Series("x", pts[:1])], title="t"))
    assert "<svg" not in one and "not enough history" in one


def test_axis_maxima_are_round_and_bars_show_shrinking_tables():
    assert [charts.nice_ceiling(v) for v in (0.7, 3, 18, 240, 999)] == [1, 5, 20, 250, 1000]
    assert charts.nice_ceiling_binary(3.2 * 1024**2) == 5 * 1024**2
    svg = str(charts.bar_chart([("grew", 100.0), ("shrank", -50.0)], title="growth"))
    assert svg.count('class="bar"') == 1 and svg.count('class="bar negative"') == 1
    assert str(charts.sparkline([1.0], title="s")).count("<svg") == 0


def test_statement_text_is_escaped_not_executed_in_the_page(client, migrated, profile):
    with connect_as(profile, "app") as c:
        # a statement shape no other test runs: pg_stat_statements keeps the first text seen
        c.execute("SELECT upper(reverse(md5('x'))) /* <script>alert('x')</script> */")
    with connect_as(profile, "admin") as c:
        qid = c.execute("SELECT queryid FROM pg_stat_statements WHERE query LIKE "
                        "'%<script>alert%' LIMIT 1").fetchone()[0]
    page = client().get(f"/p/local/queries/{qid}").text
    assert "&lt;script&gt;alert(" in page
    assert "<script>alert" not in page


def test_the_explain_page_reads_the_statement_with_postgresqls_parser(client, migrated, profile):
    """One statement to PostgreSQL is explained (a $ inside an identifier is no dollar quote);
    what EXPLAIN cannot take is refused by kind, not sent. Several statements never reach the
    server either (tests/test_sqltext.py calls explain_statement as this page does)."""
    with connect_as(profile, "app") as c:
        # statement shapes no other test runs: pg_stat_statements keeps the first text seen
        c.execute("SELECT count(*) AS n$a$ FROM notes WHERE length(body) > 7 /* $a$; */")
        c.execute("CREATE FUNCTION pg_temp.sqltext_probe() RETURNS int LANGUAGE sql "
                  "BEGIN ATOMIC SELECT 1; SELECT 2; END")
    with connect_as(profile, "admin") as c:
        def queryid(pattern: str) -> int:
            return c.execute("SELECT queryid FROM pg_stat_statements WHERE query LIKE %s "
                             "LIMIT 1", (pattern,)).fetchone()[0]
        one, function = queryid("%AS n$a$ FROM notes%"), queryid("%sqltext_probe%")
    http = client()
    page = http.get(f"/p/local/queries/{one}/explain")
    assert page.status_code == 200 and "Aggregate" in page.text, page.text[:500]
    res = http.get(f"/p/local/queries/{function}/explain")
    assert res.status_code == 403 and "EXPLAIN cannot take CREATE FUNCTION" in res.text


def test_create_index_confirmation_checks_the_table_and_columns_first(client, migrated):
    c = client()
    ok = c.get("/p/local/indexes/create", params={"table": "notes", "columns": "subject_id"})
    assert ok.status_code == 200 and 'id="confirm"' in ok.text
    for params, reason in (({"table": "notes", "columns": ""}, "at least one column"),
                           ({"table": "nosuch", "columns": "a"}, "no table public.nosuch"),
                           ({"table": "notes", "columns": "subject_id,nope"}, "no column(s) nope")):
        res = c.get("/p/local/indexes/create", params=params)
        assert res.status_code == 400 and reason in res.text, (params, res.text[:300])
        assert 'id="confirm"' not in res.text


def test_a_malformed_query_parameter_renders_the_error_page(client, migrated):
    res = client().get("/p/local/queries", params={"limit": "abc"})
    assert res.status_code == 400 and "text/html" in res.headers["content-type"]
    assert "invalid value for limit" in res.text


def test_activity_pages_name_the_missing_grant_instead_of_looking_empty(
        client, env, cluster, profile, migrated, tmp_path):
    from tests.diag_helpers import TemporaryRole, remote_profile_env

    c = client()
    remote_profile_env(env, cluster, "staging", database="studyhub")
    assert c.get("/p/staging/live").status_code == 200  # the real ops role has pg_monitor
    with TemporaryRole(profile, "studyhub") as role:  # CONNECT only
        remote_profile_env(env, cluster, "staging", database="studyhub", ops_user=role.name,
                           ops_password=role.password)
        for path in ("/p/staging/live", "/p/staging/queries"):
            res = c.get(path)
            assert res.status_code == 400 and f"GRANT pg_monitor TO {role.name};" in res.text
            assert 'class="grid sessions"' not in res.text


# ------------------------------------------------------------------ how `studyhub dashboard` starts
def test_settings_reach_the_app_through_the_environment_without_the_token(env):
    """`studyhub dashboard` starts uvicorn with the app factory's name (it imports no part of
    the dashboard) and hands the settings over in the environment; the token is never in it
    (the app reads it from its own variable, as the command did)."""
    from pydantic import SecretStr

    from studyhub.dashboard.app import dashboard_from_environment
    from studyhub.serving import TOKEN_ENV

    settings = DashboardSettings(default_profile="staging",
                                 explicit_profiles=frozenset({"production"}), database="other",
                                 token=SecretStr(TOKEN), history_stale_after_s=60,
                                 trusted_proxies=("10.0.0.0/24",), forwarded_header="Forwarded")
    handed = settings.to_environment()
    assert TOKEN not in str(handed)
    for key, value in handed.items():
        env.setenv(key, value)
    env.setenv(TOKEN_ENV, TOKEN)
    assert dashboard_from_environment().state.settings == settings


@pytest.mark.slow
def test_the_dashboard_command_serves_with_its_options(env, cluster, migrated, profile):
    """The real command: --allow-actions production reaches the app started by name, which
    then offers to act on production."""
    import os
    import subprocess
    import sys
    import time

    from tests.dashboard_helpers import free_port

    point_at_local(env, cluster, migrated, "production")
    sleeper = Background(profile, "SELECT pg_sleep(60) /* started by the command */")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "studyhub.cli.main", "dashboard", "--port", str(port),
         "--allow-actions", "production"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        page = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/p/production/live/terminate/"
                                 f"{sleeper.pid}", timeout=10)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
        sleeper.close()
    assert page is not None and page.status_code == 200, output
    assert 'id="confirm"' in page.text
    assert "actions enabled on protected: production" in output
