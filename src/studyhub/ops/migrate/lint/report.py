"""``migrate lint``'s entry point: render the migrations of a range (``statements``), run the
analyzer over the chain, merge squawk's findings, apply the acknowledgements, and report."""

from __future__ import annotations

from dataclasses import dataclass

from studyhub.connect import connect
from studyhub.ops.migrate import statements as ms
from studyhub.ops.migrate.lint.acks import apply_acks
from studyhub.ops.migrate.lint.analyzer import Analyzer
from studyhub.ops.migrate.lint.knowledge import KNOWN_VOLATILE
from studyhub.ops.migrate.lint.rules import WARNING, Cleared, Finding
from studyhub.ops.migrate.lint.squawk import merge_squawk, run_squawk, squawk_version, statement_at
from studyhub.ops.migrate.revisions import ExtraVersions
from studyhub.ops.queries import load
from studyhub.ops.space import table_sizes


@dataclass
class LintReport:
    rev_range: str
    migrations: list[str]
    findings: list[Finding]
    cleared: list[Cleared]
    sizes_from: str | None = None
    sizes_error: str | None = None
    squawk: str | None = None  # squawk's version
    direction: str = "upgrade"  # upgrade | downgrade

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.blocking)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == WARNING and not f.acknowledged)

    @property
    def acknowledged(self) -> int:
        return sum(1 for f in self.findings if f.acknowledged)

    @property
    def ok(self) -> bool:
        return self.errors == 0


def _database_facts(profile, database: str | None) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Table sizes (ops role: pg_monitor is enough) and the volatile functions in pg_proc."""
    with connect(profile, "ops", database=database,
                 application_name="studyhub migrate lint") as conn:
        space = table_sizes(conn)
        volatile = {r[0] for r in conn.execute(load("get_volatile_function_names")).fetchall()}
    sizes = {}
    for t in space.tables:
        name = t.table if t.schema == "public" else f"{t.schema}.{t.table}"
        sizes[name] = (t.row_estimate, t.total_bytes)
    return sizes, volatile


def lint(rev_range: str | None = None, *, profile=None, database: str | None = None,
         extra_versions: ExtraVersions = (), use_squawk: bool = True,
         downgrade: bool = False) -> LintReport:
    """Lint the upgrade SQL of every migration in ``rev_range`` (default: all of them), or
    with ``downgrade`` the SQL of their downgrades (newest first, the order they run).

    Earlier migrations are analysed too (what they established — validated checks, indexes —
    matters) but only the range's findings are reported; downgrades are judged from the
    schema the upgrades up to the range's end built. With ``profile`` the findings carry
    table sizes and pg_proc decides which defaults are volatile."""
    everything = ms.render_migrations(None if rev_range is None else _upto(rev_range),
                                      extra_versions=extra_versions)
    wanted = {m.revision for m in (ms.render_migrations(rev_range, extra_versions=extra_versions)
                                   if rev_range else everything)}
    downgrades = ms.render_migrations(rev_range, extra_versions=extra_versions,
                                      downgrade=True) if downgrade else []
    sizes: dict[str, tuple[int, int]] = {}
    volatile = set(KNOWN_VOLATILE)
    sizes_from = sizes_error = None
    if profile is not None:
        try:
            sizes, db_volatile = _database_facts(profile, database)
            volatile |= db_volatile
            sizes_from = f"{profile.name}/{profile.endpoint('ops', database).database}"
        except Exception as exc:  # sizes are a bonus; linting works offline
            sizes_error = str(exc).splitlines()[0]
    analyzer = Analyzer(volatile, sizes)
    for m in everything:
        analyzer.migration(m)
    if downgrade:  # undo from the range's end, newest first, with what the upgrades built
        analyzer.findings, analyzer.cleared = [], {}
        for m in downgrades:
            analyzer.migration(m)
        reported = downgrades
    else:
        reported = [m for m in everything if m.revision in wanted]
    findings = [f for f in analyzer.findings if f.revision in wanted]
    cleared: list[Cleared] = []
    version = None
    if use_squawk:
        version = squawk_version()
        by_rev = {m.revision: m for m in reported}
        for rev, items in run_squawk(reported).items():
            m = by_rev[rev]
            for item in items:
                st = statement_at(m, int(item.get("line", 0)), int(item.get("column", 0)))
                if st is None:
                    continue
                merge_squawk(m, st, item, findings, analyzer, cleared, sizes)
    apply_acks(findings, reported)
    findings.sort(key=lambda f: ([m.revision for m in reported].index(f.revision)
                                 if f.revision in wanted else 0, f.statement_number))
    return LintReport(rev_range or "base:heads", [m.revision for m in reported], findings,
                      cleared, sizes_from, sizes_error, version,
                      "downgrade" if downgrade else "upgrade")


def _upto(rev_range: str) -> str:
    """The chain from base to the end of ``rev_range`` (earlier migrations set the scene)."""
    lower, sep, upper = rev_range.partition(":")
    return f"base:{upper or 'heads'}" if sep else f"base:{lower}"

