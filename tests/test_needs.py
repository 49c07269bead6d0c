"""Tests that cannot run for want of something outside the project (``@pytest.mark.needs``,
tests/conftest.py) are skipped on a developer's machine but FAIL in CI: CI cannot go green
without a browser. Proven on the real browser tests, in a pytest of their own, with Chromium
pointed at a path where there is none."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSER_TESTS = "tests/test_dashboard_browser.py"


def _browser_tests() -> list[str]:
    tree = ast.parse((ROOT / BROWSER_TESTS).read_text())
    names = [n.name for n in tree.body
             if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert names
    return names


def _pytest(tmp_path: Path, ci: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["STUDYHUB_TEST_CHROMIUM"] = str(tmp_path / "no-chromium-here")
    if ci is not None:
        env["CI"] = ci
    res = subprocess.run(
        [sys.executable, "-m", "pytest", BROWSER_TESTS, "-q", "-rsE", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return res.returncode, res.stdout + res.stderr


def test_in_ci_a_missing_browser_fails_every_browser_test(tmp_path):
    code, out = _pytest(tmp_path, "true")
    assert code == 1, out  # tests failed; 0 would mean "all passed or skipped"
    tests = _browser_tests()
    assert f"{len(tests)} errors in" in out and "skipped" not in out, out
    for name in tests:
        assert f"ERROR {BROWSER_TESTS}::{name} - Failed: the browser tests need Chromium at " \
               f"{tmp_path / 'no-chromium-here'}" in out, out
    assert "CI='true' is set, so this is a failure, not a skip" in out


def test_outside_ci_a_missing_browser_skips_with_the_reason(tmp_path):
    code, out = _pytest(tmp_path, None)
    assert code == 0, out
    assert f"{len(_browser_tests())} skipped in" in out and "error" not in out, out
    assert f"the browser tests need Chromium at {tmp_path / 'no-chromium-here'}" in out
