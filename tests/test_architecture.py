"""The architecture, checked: layers and cycles (import-linter's contracts in pyproject.toml),
every module importable on its own, SQL questions in ops/sql/ and every file there used, long
modules saying why. docs/architecture.md describes what these hold."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pglast
import pytest
from pglast import ast as pg_ast
from pglast.visitors import Visitor

import studyhub

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "studyhub"
SQL_DIR = SRC / "ops" / "sql"
MAX_LINES = 500
LONG_REASON = "One module on purpose"


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(studyhub.__path__, "studyhub."))


def test_import_contracts_hold():
    """renderers → ops → serving → connect → profiles → local → core, the renderers independent
    of each other, no cycles between the packages and modules of any package."""
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_no_module_is_in_an_import_cycle():
    """Also none hidden by an import inside a function: grimp sees those too."""
    graph = grimp.build_graph("studyhub")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    assert len(index) > 100
    assert not cycles, cycles


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter():
    """A package whose ``__init__`` imports a sibling that imports the package back breaks only
    when one particular module is imported first (``import studyhub.ops.cluster`` did, once):
    import each one first, in one child process that forgets studyhub between modules."""
    code = (
        "import importlib, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    for k in [k for k in sys.modules if k == 'studyhub' or k.startswith('studyhub.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        bad.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n")
    names = modules()
    assert len(names) > 100
    # two children, each with every other module (the machine has two cores)
    children = [subprocess.Popen([sys.executable, "-c", code, *names[i::2]], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for i in range(2)]
    for child in children:
        out, err = child.communicate()
        assert child.returncode == 0, out + err


def python_files(*parts: str) -> list[Path]:
    return sorted(p for part in parts for p in (SRC / part).rglob("*.py"))


def test_every_sql_file_is_used():
    """Each ops/sql file is named somewhere in the code (``load("name")`` or a helper given the
    name): none is left behind when its caller goes."""
    names = sorted(p.stem for p in SQL_DIR.glob("*.sql"))
    assert len(names) > 50
    code = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    unused = [n for n in names if f'"{n}"' not in code and f"'{n}'" not in code]
    assert not unused, f"sql files no code loads: {unused}"


class _Relations(Visitor):
    def __init__(self) -> None:
        self.found: list[str] = []

    def visit(self, ancestors, node):  # noqa: ANN001 - pglast's visitor protocol
        if isinstance(node, pg_ast.RangeVar):
            self.found.append(node.relname)
        elif isinstance(node, (pg_ast.InsertStmt, pg_ast.UpdateStmt, pg_ast.DeleteStmt,
                               pg_ast.MergeStmt)):
            self.found.append(type(node).__name__)


def embedded_questions(path: Path) -> list[str]:
    """String constants in ``path`` that PostgreSQL's parser reads as SQL touching a relation
    (FROM/JOIN a table or view, or DML). Composition with psycopg.sql around identifiers
    ("CREATE INDEX {} ON {}") does not parse, and function calls or settings
    ("SELECT pg_is_in_recovery()", "SHOW max_connections") name no relation: both allowed."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value.strip()
        if not re.match(r"(?is)(with|select|insert|update|delete|merge)\b", text):
            continue
        try:  # psycopg's placeholders as PostgreSQL's own, so the parser reads the rest
            statements = pglast.parse_sql(re.sub(r"%\(\w+\)s|%s", "$1", text))
        except pglast.parser.ParseError:
            continue
        relations = _Relations()
        for raw in statements:
            relations(raw.stmt)
        if relations.found:
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {text[:60]!r}")
    return found


def test_no_ops_or_local_module_embeds_a_question():
    """Questions (anything reading or writing a relation) live in ops/sql/, named by what they
    answer, where a DBA can review them as SQL."""
    files = python_files("ops", "local")
    assert len(files) > 40
    found = [q for p in files for q in embedded_questions(p)]
    assert not found, "\n".join(found)


def test_the_embedded_question_check_would_see_one(tmp_path):
    """The check above is not vacuous: an inline catalog question is caught, a function call
    and a composed identifier statement are not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        'A = "SELECT 1 FROM pg_database WHERE datname = %s"\n'
        'B = "SELECT pg_is_in_recovery()"\n'
        'C = "CREATE INDEX CONCURRENTLY {} ON {} ({})"\n')
    original = SRC
    try:
        globals()["SRC"] = tmp_path
        assert [q.split(":")[1] for q in embedded_questions(sample)] == ["1"]
    finally:
        globals()["SRC"] = original


def test_long_modules_say_why_at_their_top():
    files = list(SRC.rglob("*.py"))
    long = [p for p in files if len(p.read_text().splitlines()) > MAX_LINES]
    silent = [str(p.relative_to(SRC)) for p in long
              if LONG_REASON not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not silent, f"over {MAX_LINES} lines without '{LONG_REASON} (…): why' at the top"


def test_package_surfaces_import():
    """Each concern's package states its public surface; importing it gives those names."""
    for name in ("backup", "cluster", "migrate", "privacy", "seed", "health", "indexes"):
        package = importlib.import_module(f"studyhub.ops.{name}")
        assert package.__doc__, name
        exported = getattr(package, "__all__", None)
        assert exported, f"studyhub.ops.{name} has no __all__"
        missing = [n for n in exported if not hasattr(package, n)]
        assert not missing, (name, missing)
