"""Benchmark: GDPR export and erasure of the heavy student and of a typical one, on a
production-like data set and again after it grows ~10x around them.

    uv run python bench/privacy.py                       # 20,000 students, then x10 around them
    uv run python bench/privacy.py --students 2000 --growth 5     # quick look
    uv run python bench/privacy.py --growth-mode fresh   # grown set seeded anew (much faster)

Claim under test (issue 6): export and erasure cost grows with the person's own data, not with
the database — every query the privacy tools run filters one indexed key per table. Both sizes
are measured in the same run, on the same machine, and the ratio grown/base is printed (aim:
under 1.5; heavy erasure under 1 s; typical erasure under 50 ms). Timings on a shared 2-core
machine are noisy: each figure is the median of ``--repeat`` runs.

Erasure is measured as a rehearsal (``erase_person(..., rehearse=True)``): every DELETE, the
verification and the ledger insert run, then the transaction is rolled back, so the same people
can be measured again. Data comes from ``studyhub seed`` (``--heavy-student``), run on a cluster
of the bench's own under ``--home`` (destroyed at the end unless ``--keep``).

Growth modes: ``append`` (default) seeds the extra students into the same database, so the very
same heavy and typical students are measured again — but the seeder then loads with every key
and index in place (about 16k rows/s here: an hour for +47M rows). ``fresh`` seeds the grown
data set into a second database with keys and indexes rebuilt (several times faster); its heavy
student is a different person of the same build (>= 10k cards, >= 100k reviews) and the typical
one is again the median, so compare per-row cost too (printed as us/row). With both databases
present, ``fresh`` measures them in interleaved rounds, which cancels drifts in machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

from studyhub.connect import connect
from studyhub.local import LocalCluster
from studyhub.ops import migrate, privacy
from studyhub.ops.privacy import PseudonymKey

KEY = PseudonymKey(b"bench-only-pseudonym-key-0123456789abcdef", "bench")


@dataclass
class Person:
    label: str
    student_id: str
    rows: int


@dataclass
class Sample:
    export_s: float
    erase_s: float
    rows: int
    export_bytes: int


def seed(home: Path, students: int, heavy: bool, database: str | None = None) -> None:
    args = [sys.executable, "-m", "studyhub.cli.main", "seed", "--students", str(students)]
    if database:
        args += ["--database", database]
    if heavy:
        args.append("--heavy-student")
    env = dict(os.environ, STUDYHUB_HOME=str(home))
    started = time.monotonic()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"studyhub seed failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    print(f"  seeded {students:,} students{' + the heavy one' if heavy else ''} in "
          f"{time.monotonic() - started:.0f} s", flush=True)


def database_rows(conn) -> tuple[int, int]:
    conn.execute("ANALYZE")
    rows = conn.execute(
        "SELECT coalesce(sum(n_live_tup), 0)::bigint FROM pg_stat_user_tables "
        "WHERE schemaname = 'public'").fetchone()[0]
    size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    conn.commit()
    return rows, size


def settle(cluster: LocalCluster, database: str | None) -> None:
    """Measure a quiet database: VACUUM ANALYZE what seeding left (or autovacuum would do it in
    the middle of the measurements), then CHECKPOINT so dirty buffers are not flushed then."""
    started = time.monotonic()
    with cluster.admin_connect(database or "studyhub") as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    print(f"  vacuumed, analyzed, checkpointed in {time.monotonic() - started:.0f} s", flush=True)


def pick_people(conn) -> list[Person]:
    """The heavy student (most reviews) and a typical one (the median by reviews)."""
    per_student = conn.execute(
        "SELECT student_id, count(*) AS n FROM flashcard_reviews GROUP BY student_id "
        "ORDER BY n DESC, student_id").fetchall()
    conn.commit()
    if not per_student:
        sys.exit("the database has no flashcard reviews: `studyhub seed --heavy-student` loaded "
                 "nothing (this bench needs the seeder from the seed branch, now on main)")
    heavy = per_student[0]
    typical = per_student[len(per_student) // 2]
    return [Person("heavy", str(heavy[0]), 0), Person("typical", str(typical[0]), 0)]


class Runs:
    """Export and rehearsed-erasure timings of one person in one database."""

    def __init__(self, profile, database: str | None, person: Person, workdir: Path) -> None:
        self.conn = connect(profile, "app", database=database, application_name="bench privacy")
        self.person, self.workdir = person, workdir
        self.exports: list[float] = []
        self.erasures: list[float] = []
        self.rows = self.size = 0

    def once(self) -> None:
        out = self.workdir / f"{self.person.label}-{len(self.exports)}.zip"
        t = time.perf_counter()
        res = privacy.export_person(self.conn, out, student_id=self.person.student_id)
        self.exports.append(time.perf_counter() - t)
        self.size = out.stat().st_size
        out.unlink()
        t = time.perf_counter()
        er = privacy.erase_person(self.conn, KEY, student_id=self.person.student_id,
                                  rehearse=True)
        self.erasures.append(time.perf_counter() - t)
        assert er.verified and er.rolled_back
        self.rows = er.rows_total
        assert sum(res.rows_by_table.values()) == self.rows, (res.rows_by_table,
                                                              er.rows_by_table)

    def sample(self) -> Sample:
        self.conn.close()
        return Sample(statistics.median(self.exports), statistics.median(self.erasures),
                      self.rows, self.size)


def measure(runs: list[Runs], repeat: int) -> list[Sample]:
    """``repeat`` rounds, each visiting every (database, person) once: slow drifts in the
    machine's load (other engineers' jobs) hit both sizes alike."""
    for _ in range(repeat):
        for r in runs:
            r.once()
    return [r.sample() for r in runs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", type=int, default=20_000, help="base data set (production-like)")
    ap.add_argument("--growth", type=float, default=10.0, help="grow the data set this many times")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    ap.add_argument("--growth-mode", choices=("append", "fresh"), default="append",
                    help="append to the same database, or seed the grown set anew")
    ap.add_argument("--home", type=Path, help="cluster home (default: a new dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the cluster afterwards")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    home = bench_home(args.home, prefix="studyhub-bench-privacy-")
    cluster = LocalCluster(home)
    workdir = Path(tempfile.mkdtemp(prefix="bench-privacy-out-"))
    results: dict[str, dict] = {}
    try:
        print(f"cluster under {home}", flush=True)
        cluster.up()
        profile = cluster.profile()
        migrate.upgrade(profile)
        print(f"base: {args.students:,} students + the heavy student", flush=True)
        seed(home, args.students, heavy=True)
        with connect(profile, "app") as conn:
            people = pick_people(conn)
            base_rows, base_bytes = database_rows(conn)
        print(f"  database: {base_rows:,} rows, {base_bytes / 2**30:.1f} GiB", flush=True)
        settle(cluster, None)
        if args.growth_mode == "append":  # the same people again later: measure them now
            samples = measure([Runs(profile, None, p, workdir) for p in people], args.repeat)
            base = {p.label: s for p, s in zip(people, samples)}
        base_people = people

        grown_db = None
        if args.growth_mode == "append":
            extra = int(args.students * (args.growth - 1))
            print(f"growth: {extra:,} more students around them", flush=True)
            seed(home, extra, heavy=False)
        else:
            grown_db = "studyhub_grown"
            total = int(args.students * args.growth)
            print(f"growth: a second database seeded anew with {total:,} students + a heavy "
                  "student", flush=True)
            cluster.create_database(grown_db)
            migrate.upgrade(profile, database=grown_db)
            seed(home, total, heavy=True, database=grown_db)
        with connect(profile, "app", database=grown_db) as conn:
            if grown_db:
                people = pick_people(conn)
            grown_rows, grown_bytes = database_rows(conn)
        print(f"  database: {grown_rows:,} rows, {grown_bytes / 2**30:.1f} GiB "
              f"({grown_rows / base_rows:.1f}x)", flush=True)
        settle(cluster, grown_db)
        if args.growth_mode == "append":
            samples = measure([Runs(profile, None, p, workdir) for p in people], args.repeat)
            grown = {p.label: s for p, s in zip(people, samples)}
        else:  # both databases exist: interleave base and grown rounds
            print("  measuring both databases in interleaved rounds", flush=True)
            runs = [Runs(profile, db, p, workdir)
                    for db, group in ((None, base_people), (grown_db, people)) for p in group]
            samples = measure(runs, args.repeat)
            n = len(people)
            base = {p.label: s for p, s in zip(base_people, samples[:n])}
            grown = {p.label: s for p, s in zip(people, samples[n:])}

        print()
        print(f"{'':28}{'base':>12}{'grown':>12}{'ratio':>8}")
        print(f"{'database rows':28}{base_rows:>12,}{grown_rows:>12,}"
              f"{grown_rows / base_rows:>8.1f}")
        for p in people:
            b, g = base[p.label], grown[p.label]
            print(f"{p.label} student: {b.rows:,} rows ({b.export_bytes / 2**20:.1f} MiB zip)"
                  + (f", grown: {g.rows:,} rows" if g.rows != b.rows else ""))
            for what, bv, gv in (("  export", b.export_s, g.export_s),
                                 ("  erase (rolled back)", b.erase_s, g.erase_s)):
                print(f"{what:28}{bv * 1000:>10.1f}ms{gv * 1000:>10.1f}ms{gv / bv:>8.2f}")
            if g.rows != b.rows:
                for what, bv, gv in (("  export us/row", b.export_s, g.export_s),
                                     ("  erase us/row", b.erase_s, g.erase_s)):
                    bu, gu = bv / b.rows * 1e6, gv / g.rows * 1e6
                    print(f"{what:28}{bu:>10.1f}us{gu:>10.1f}us{gu / bu:>8.2f}")
            results[p.label] = {"rows": [b.rows, g.rows], "export_s": [b.export_s, g.export_s],
                                "erase_s": [b.erase_s, g.erase_s]}
        heavy_ok = grown["heavy"].erase_s < 1.0
        typical_ok = grown["typical"].erase_s < 0.050
        def ratio(label: str, attr: str) -> float:
            """grown/base; per row for the heavy student when the grown one is another person
            (the typical student's time is mostly fixed cost, compared as is)."""
            b, g = base[label], grown[label]
            if label == "heavy" and g.rows != b.rows:
                return (getattr(g, attr) / g.rows) / (getattr(b, attr) / b.rows)
            return getattr(g, attr) / getattr(b, attr)

        worst = max(ratio(p, a) for p in base for a in ("export_s", "erase_s"))
        print()
        print(f"heavy erasure < 1 s: {'yes' if heavy_ok else 'NO'}; typical erasure < 50 ms: "
              f"{'yes' if typical_ok else 'NO'}; worst grown/base ratio {worst:.2f} "
              f"({'under' if worst < 1.5 else 'OVER'} 1.5)")
        results["growth_mode"] = args.growth_mode
        results["database_rows"] = [base_rows, grown_rows]
        results["database_bytes"] = [base_bytes, grown_bytes]
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            cluster.destroy()
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
