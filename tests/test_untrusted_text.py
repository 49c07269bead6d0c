"""Text that comes from a person, a database, a file or a server never crashes or fools the
CLI: Rich markup (``[/bad]``, ``[red]``, ``[link=…]``) and emoji codes (``:warning:``) in it
print literally, with the command's normal exit code. Whole-string name checks refuse a
trailing newline (``re.match`` with ``$`` accepts one; ``re.fullmatch`` does not)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import typer.main
from psycopg import sql

from studyhub.cli.main import app
from studyhub.ops.backup import setformat
from studyhub.ops import cluster as cluster_ops
from studyhub.ops.cluster import LocalBackend
from tests.conftest import connect_as

# A closing tag that closes nothing (Rich raised MarkupError), valid style and link tags (they
# silently restyled or swallowed text) and an emoji code (it became a symbol).
PAYLOADS = {
    "bad-close-tag": "[/bad]x",
    "style-tag": "[bold red]x[/]",
    "link-tag": "[link=http://evil]x",
    "emoji-code": "x:warning:",
}
# The same tricks without "/", for file and directory names.
FILE_NAME_PAYLOADS = {
    "style-tag": "[bold red]x",
    "link-tag": "[link=https:evil]x",
    "emoji-code": "x:warning:",
}

ECHOED, NOT_CHECKED, NEVER_SHOWN = True, None, False
AS_PATH = "as path"  # echoed the way pathlib spells it ("a//b" is "a/b")

# (argv with {p} for the payload and {tmp} for a scratch directory, exit code, whether the
# output must show the payload literally): every command that takes a name, an identifier or
# free text. AS_PATH where it is a path; NOT_CHECKED where the command reports something else
# (alembic's own reading of a revision range, Typer's list of choices); NEVER_SHOWN where
# echoing would leak (emails). A MarkupError would escape cli() and fail the test.
ARGUMENT_CASES = [
    # diag
    (["diag", "create-index", "{p}", "name", "--yes"], 1, ECHOED),  # the issue's own case
    (["diag", "create-index", "students", "{p}", "--yes"], 1, ECHOED),
    (["diag", "create-index", "{p}", "name", "--dry-run"], 0, ECHOED),
    (["diag", "create-index", "students", "{p}", "--dry-run"], 0, ECHOED),
    (["diag", "create-index", "students", "id", "--name", "{p}", "--dry-run"], 0, ECHOED),
    (["diag", "explain", "{p}"], 1, NOT_CHECKED),
    (["diag", "explain", "select id from students where school = '{p}'"], 0, ECHOED),
    (["diag", "doctor", "--check", "{p}"], 1, ECHOED),
    (["diag", "doctor", "--set", "long_queries.warn_s={p}"], 1, ECHOED),
    (["diag", "slow-queries", "--sort", "{p}"], 1, ECHOED),
    (["diag", "slow-queries", "--since", "{p}"], 1, ECHOED),
    (["diag", "connections", "--by", "{p}"], 1, ECHOED),
    (["diag", "sizes", "--database", "{p}"], 1, ECHOED),
    (["diag", "indexes", "--database", "{p}"], 1, ECHOED),
    (["diag", "sizes", "--profile", "{p}"], 1, ECHOED),
    # backup
    (["backup", "verify", "{p}", "--dir", "{tmp}"], 1, ECHOED),
    (["backup", "restore", "{p}", "--database", "x", "--dir", "{tmp}", "--dry-run"], 1, ECHOED),
    (["backup", "import", "{tmp}/{p}.sql", "--database", "{p}", "--dry-run"], 0, ECHOED),
    (["backup", "list", "--dir", "{tmp}/{p}"], 0, AS_PATH),
    # emergency
    (["emergency", "queries", "--older-than", "{p}"], 1, ECHOED),
    (["emergency", "queries", "--state", "{p}"], 1, ECHOED),
    (["emergency", "queries", "--database", "{p}"], 1, ECHOED),
    (["emergency", "kill-all", "--database", "{p}", "--dry-run"], 1, ECHOED),
    (["emergency", "kill-all", "--block-new", "--hold", "{p}", "--dry-run"], 1, ECHOED),
    (["emergency", "unblock", "--database", "{p}", "--dry-run"], 0, ECHOED),
    # migrate
    (["migrate", "up", "--to", "{p}"], 1, NOT_CHECKED),
    (["migrate", "down", "--to", "{p}", "--dry-run"], 1, ECHOED),
    (["migrate", "plan", "--to", "{p}"], 1, ECHOED),
    (["migrate", "lint", "{p}"], 1, NOT_CHECKED),
    (["migrate", "roundtrip", "--revision", "{p}"], 1, ECHOED),
    (["migrate", "current", "--database", "{p}"], 1, ECHOED),
    # privacy
    (["privacy", "export", "--student", "{p}", "--out", "{tmp}/x.zip"], 1, ECHOED),
    (["privacy", "export", "--email", "{p}@example.com", "--out", "{tmp}/x.zip"], 1, NEVER_SHOWN),
    (["privacy", "erase", "--email", "{p}@example.com", "--dry-run"], 1, NEVER_SHOWN),
    (["privacy", "erase", "--student", "{p}", "--dry-run"], 1, ECHOED),
    (["privacy", "ledger", "--database", "{p}"], 1, ECHOED),
    (["privacy", "reapply-erasures", "--fork", "{p}", "--dry-run"], 1, ECHOED),
    (["privacy", "reapply-erasures", "--database", "{p}", "--dry-run"], 1, ECHOED),
    (["privacy", "anonymize", "--dataset", "{p}", "--out", "{tmp}/a.csv"], 2, NOT_CHECKED),
    # cluster
    (["cluster", "fork", "--name", "{p}", "--at", "now", "--dry-run"], 1, ECHOED),
    (["cluster", "fork", "--name", "my-fork", "--at", "{p}", "--dry-run"], 1, ECHOED),
    (["cluster", "forks", "remove", "{p}", "--dry-run"], 1, ECHOED),
    (["cluster", "forks", "stop", "{p}"], 1, ECHOED),
    (["cluster", "forks", "start", "{p}"], 1, ECHOED),
    (["cluster", "replica", "remove", "{p}", "--dry-run"], 1, ECHOED),
    (["cluster", "pool", "add", "--name", "{p}", "--dry-run"], 1, ECHOED),
    (["cluster", "pool", "add", "--name", "pool1", "--mode", "{p}", "--dry-run"], 1, ECHOED),
    (["cluster", "pool", "remove", "{p}", "--dry-run"], 1, ECHOED),
    # local, top, seed, dashboard
    (["local", "url", "--role", "{p}"], 1, ECHOED),
    (["local", "psql", "--role", "{p}"], 1, ECHOED),
    (["top", "--once", "--filter", "{p}"], 0, ECHOED),
    (["top", "--once", "--sort", "{p}"], 1, ECHOED),
    (["top", "--once", "--database", "{p}"], 1, ECHOED),
    (["seed", "--students", "1", "--database", "{p}"], 1, ECHOED),
    (["dashboard", "--host", "{p}"], 1, ECHOED),
]


def _case_id(case) -> str:
    return " ".join(case[0]).replace("{p}", "P").replace("{tmp}", "TMP")


def _output_of(res) -> str:
    return res.stdout + res.stderr


def _assert_shown_as_typed(res, payload: str, code: int, echo: bool | str | None) -> None:
    out = _output_of(res)
    assert "Traceback" not in out and "MarkupError" not in out
    assert res.exit_code == code, out
    if echo is ECHOED:
        assert payload in out, out
    elif echo == AS_PATH:
        assert str(Path(payload)) in out, out
    elif echo is NEVER_SHOWN:
        assert payload not in out, out


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=list(PAYLOADS))
@pytest.mark.parametrize("argv,code,echo", ARGUMENT_CASES,
                         ids=[_case_id(c) for c in ARGUMENT_CASES])
def test_markup_in_an_argument_prints_literally(cli, migrated, monkeypatch, tmp_path, argv,
                                                code, echo, payload):
    monkeypatch.setenv("STUDYHUB_PSEUDONYM_KEY", "k" * 64)
    args = [a.replace("{p}", payload).replace("{tmp}", str(tmp_path)) for a in argv]
    _assert_shown_as_typed(cli(*args), payload, code, echo)


# ------------------------------------------------------------------ names from the server
@pytest.fixture(scope="module", params=PAYLOADS.values(), ids=list(PAYLOADS))
def markup_database(request, cluster, migrated):
    """A database named like markup, with a session in it (application_name and query text
    alike) left idle in a transaction, as another client could leave it."""
    name = request.param
    cluster.create_database(name)
    session = connect_as(migrated, "app", name, autocommit=False, application_name=name)
    session.execute(sql.SQL("select {}").format(sql.Literal(name)))
    yield name
    session.close()
    cluster.drop_database(name)


SERVER_NAME_CASES = [
    ["diag", "sizes", "--database", "{p}"],
    ["diag", "doctor", "--database", "{p}", "--no-fail"],
    ["diag", "indexes", "--database", "{p}"],
    ["diag", "slow-queries", "--database", "{p}", "--reset", "--dry-run"],
    ["diag", "connections", "--by", "database"],
    ["diag", "connections", "--by", "app"],
    ["emergency", "queries", "--all-databases", "--older-than", "0s"],
    ["emergency", "kill-all", "--database", "{p}", "--dry-run"],
    ["migrate", "plan", "--database", "{p}"],
    ["top", "--once"],
]


@pytest.mark.parametrize("argv", SERVER_NAME_CASES, ids=lambda a: " ".join(a))
def test_markup_in_names_read_from_the_server_prints_literally(cli, markup_database, argv):
    res = cli(*[a.replace("{p}", markup_database) for a in argv])
    _assert_shown_as_typed(res, markup_database, 0, ECHOED)


# ------------------------------------------------------------------ names from the disk
def _set_on_disk(root: Path, name: str) -> Path:
    """A complete (tiny) backup set whose directory is ``name``: its files match its manifest."""
    d = root / name
    (d / "dump").mkdir(parents=True)
    payload = b"x"
    (d / "dump" / "toc.dat").write_bytes(payload)
    when = "2026-01-01T00:00:00+00:00"
    m = setformat.Manifest(1, "studyhub", "0", "pg_dump 15", "15", "local", "h", 1, "studyhub", "UTF8",
                     True, ["0002"], when, when, "s", setformat.Compression("zstd", 3), 2, "directory",
                     [], [], [setformat.FileEntry("dump/toc.dat", len(payload),
                                            hashlib.sha256(payload).hexdigest())])
    (d / setformat.MANIFEST).write_text(json.dumps(m.to_dict()))
    return d


@pytest.mark.parametrize("payload", FILE_NAME_PAYLOADS.values(), ids=list(FILE_NAME_PAYLOADS))
def test_markup_in_backup_set_and_leftover_names_prints_literally(cli, migrated, tmp_path,
                                                                  payload):
    complete = _set_on_disk(tmp_path, payload)
    (tmp_path / f"{setformat.PARTIAL_PREFIX}{payload}").mkdir()  # an interrupted creation
    for argv, code in (
        (["backup", "list", "--dir", tmp_path], 0),
        (["backup", "prune", "--dir", tmp_path, "--dry-run"], 0),
        (["backup", "verify", complete], 0),
        (["backup", "restore", complete, "--database", "restored", "--dry-run"], 0),
    ):
        res = cli(*argv)
        _assert_shown_as_typed(res, payload, code, ECHOED)
    listed = cli("backup", "list", "--dir", tmp_path).stdout
    assert f"{setformat.PARTIAL_PREFIX}{payload}: creation did not finish" in listed


# ------------------------------------------------------------------ --help
def _commands(group, path=()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))


def test_brackets_in_help_texts_are_shown(cli):
    """Help texts are ours, but Typer reads them as markup too: a bracketed word such as
    PgBouncer's [databases] section must be escaped in the source to reach the reader."""
    checked = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        words = {w for t in texts for w in re.findall(r"\[[^\]\s]+\]", t)}
        if not words:
            continue
        out = cli(*path, "--help").stdout
        for w in words:
            assert w in out, (path, w)
            checked += 1
    assert checked >= 2  # cluster pool list's [databases], diag doctor --set's [doctor]


# ------------------------------------------------------------------ whole-string name checks
NEWLINE_TRICKS = ["{}\n", "{}\r\n", "{}\n\n", "\n{}", "{} ", "{}\x00"]


@pytest.mark.parametrize("trick", NEWLINE_TRICKS, ids=repr)
def test_cluster_and_pool_name_checks_match_the_whole_name(trick):
    cluster_ops.check_name("my-fork", "fork")
    cluster_ops.check_pool("pool1", "transaction", 10)
    with pytest.raises(cluster_ops.ClusterOpError, match="invalid fork name"):
        cluster_ops.check_name(trick.format("my-fork"), "fork")
    with pytest.raises(cluster_ops.ClusterOpError, match="invalid pool name"):
        cluster_ops.check_pool(trick.format("pool1"), "transaction", 10)


@pytest.mark.parametrize("argv,refusal", [
    (["cluster", "fork", "--name", "my-fork\n", "--at", "now", "--dry-run"], "invalid fork name"),
    (["cluster", "pool", "add", "--name", "pool1\n", "--dry-run"], "invalid pool name"),
], ids=["fork", "pool-add"])
def test_local_cluster_commands_refuse_a_name_with_a_trailing_newline(cli, migrated, cluster,
                                                                      argv, refusal):
    forks_before = sorted(p.name for p in cluster.home.glob("forks/*"))
    res = cli(*argv)
    assert res.exit_code == 1, _output_of(res)
    assert refusal in res.stderr
    assert sorted(p.name for p in cluster.home.glob("forks/*")) == forks_before


def test_a_directory_named_like_a_set_plus_newline_is_not_taken_for_a_backup(cli, tmp_path):
    """Only directories whose whole name is a set name (or that hold a manifest) are ours:
    prune must not delete somebody else's directory that merely starts like one."""
    theirs = tmp_path / "local-studyhub-20260101T000000Z\n"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("not a backup")
    assert [s.name for s in setformat.list_sets(tmp_path)] == []
    res = cli("backup", "prune", "--dir", tmp_path, "--yes")
    assert res.exit_code == 0, _output_of(res)
    assert (theirs / "keep.txt").read_text() == "not a backup"


def test_partial_writer_pid_is_read_from_the_very_end_of_the_name():
    assert setformat.partial_writer_pid(".partial-local-studyhub-20260101T000000Z-123") == 123
    assert setformat.partial_writer_pid(".partial-local-studyhub-20260101T000000Z-1\n") is None


def test_wal_archive_counts_only_whole_segment_names(migrated, cluster):
    """A file in the archive directory named like a segment plus a newline is not a
    segment (it would have been the oldest one and the start of the recoverable window)."""
    stray = cluster.wal_archive_dir / "000000000000000000000000\n"
    stray.write_bytes(b"")
    try:
        archive = LocalBackend(migrated, cluster).wal_archive()
    finally:
        stray.unlink()
    assert archive.first_segment != stray.name
    assert archive.first_segment is None or re.fullmatch(r"[0-9A-F]{24}", archive.first_segment)



STYLE_TAG = re.compile(r"\[/?(?:bold|dim|italic|underline|red|green|yellow|blue|cyan|magenta)"
                       r"(?: [a-z ]+)?\]|\[/\]")


def test_no_renderer_source_relies_on_markup():
    """The CLI's consoles print verbatim (markup=False), so a "[bold]…[/]" left in a string
    would print its brackets: style is given with rich.text.Text. Fails on any such tag in the
    CLI's source (one slipped in once, merged from a branch older than the rule)."""
    cli_dir = Path(__file__).resolve().parent.parent / "src" / "studyhub" / "cli"
    sources = sorted(cli_dir.glob("*.py"))
    assert sources
    found = [f"{p.name}:{n}: {line.strip()}" for p in sources
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if STYLE_TAG.search(line) and not line.lstrip().startswith("#")]
    assert not found, "\n".join(found)
