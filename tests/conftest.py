"""Shared fixtures: a throwaway real PostgreSQL cluster per test session.

The cluster lives in its own 0755 directory under /tmp (pytest's own tmp dirs are 0700 under
root, which the ``postgres`` OS user cannot traverse) and is destroyed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NoReturn

import psycopg
import pytest

from studyhub.cli.main import main as cli_main
from studyhub.local import LocalCluster
from studyhub.ops import migrate
from studyhub.profiles import Profile

os.environ.setdefault("COLUMNS", "200")  # Rich tables unwrapped in captured output
for _var in [v for v in os.environ if v.startswith(("STUDYHUB_", "PG"))
             and not v.startswith("STUDYHUB_TEST_")]:  # the tests' own settings stay
    del os.environ[_var]  # a developer's own settings must not leak into tests


def unavailable(reason: str) -> NoReturn:
    """A test cannot run here: something outside the project that it needs is missing (a
    program, a Python package, root). On a developer's machine it is skipped with ``reason``;
    in CI (``CI`` set to any non-empty value, as CI services and ``.ci/run`` do) it FAILS, so
    CI never goes green without running it."""
    ci = os.environ.get("CI")
    if ci:
        pytest.fail(f"{reason}; CI={ci!r} is set, so this is a failure, not a skip",
                    pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.needs(available, reason)`` (or a module's ``pytestmark``): when
    ``available`` is false the test is :func:`unavailable` — skipped, or failed in CI —
    before any of its fixtures is set up."""
    for mark in item.iter_markers("needs"):
        available, reason = mark.args
        if not available:
            unavailable(reason)


def make_home(prefix: str = "studyhub-test-") -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("STUDYHUB_TEST_TMP", "/tmp")))
    os.chmod(base, 0o755)
    return base


@pytest.fixture(scope="session")
def cluster_home() -> Iterator[Path]:
    home = make_home()
    os.environ["STUDYHUB_HOME"] = str(home)
    yield home
    os.environ.pop("STUDYHUB_HOME", None)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(cluster_home: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(cluster_home)
    c.up()
    yield c
    c.destroy()


@pytest.fixture(scope="session")
def profile(cluster: LocalCluster) -> Profile:
    return cluster.profile()


@pytest.fixture(scope="session")
def migrated(cluster: LocalCluster, profile: Profile) -> Profile:
    """The app database at head."""
    migrate.upgrade(profile)
    return profile


@pytest.fixture(scope="session")
def with_replica(cluster: LocalCluster) -> LocalCluster:
    cluster.up(replica=True)
    return cluster


@pytest.fixture(scope="session")
def with_pooler(cluster: LocalCluster) -> LocalCluster:
    cluster.up(pooler=True)
    return cluster


@pytest.fixture
def fresh_db(cluster: LocalCluster) -> Iterator[str]:
    """An empty database (owned by the app role) for one test."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    cluster.create_database(name)
    yield name
    cluster.drop_database(name)


def connect_as(profile: Profile, role: str = "app", database: str | None = None,
               **kw) -> psycopg.Connection:
    ep = profile.endpoint(role, database)
    return psycopg.connect(**ep.conninfo(), autocommit=kw.pop("autocommit", True), **kw)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``studyhub ARGS...`` in-process; returns exit code and captured output."""

    def run(*args: object) -> CliResult:
        code = cli_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3-compatible server on loopback (moto's standalone server, in this process's
    threads) for the session: the real boto3 client talks HTTP to it. Yields its URL. The
    tests' AWS settings never reach a real account: no shared config files, no instance
    metadata lookups."""
    from tests.s3_server import start_s3_server

    server, url = start_s3_server()
    yield url
    server.stop()
