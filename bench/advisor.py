"""Index advice on a seeded database: does `diag advise` find the index we removed, and only it,
and what does building it buy the workload? Baseline and result measured in the same run.

    uv run python bench/advisor.py [--students 8500] [--rounds 30] [--home /tmp/studyhub-bench-advisor]

1. Starts (or reuses) a local cluster under its own STUDYHUB_HOME and creates a fresh database
   at the migrations' head.
2. Seeds it with ``studyhub.ops.seed.seed_database`` (about 255 rows per student: 8,500
   students ≈ 2.2M rows). Where the seeder is not installed yet, a SQL filler with the seeder's
   per-student proportions (20 notes, 60 cards, 150 reviews, 10 AI exchanges) stands in.
3. Drops ``ix_notes_student_id``, ANALYZEs, resets pg_stat_statements for the database.
4. Runs a realistic app workload as the app role, with parameters (so pg_stat_statements holds
   normalized ``$n`` statements): a student's notes page, note count, notes per subject, due
   cards, AI history, a note by id. One untimed warm-up round, then the mean time per
   statement over ``--rounds`` rounds = "before".
5. Runs ``studyhub diag advise --apply --yes --json`` — the command an operator runs, in its own
   process — which plans (hypopg, generic plans), prints its recommendations and builds them
   through ``create-index`` (CONCURRENTLY, verified); checks they are exactly
   ``notes(student_id)``.
6. Re-runs the same workload with the same parameters: "after". Prints before, after and the
   ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid

from common import bench_home  # bench/common.py (scripts run from bench/)

DEFAULT_HOME = "/tmp/studyhub-bench-advisor"

WORKLOAD = {
    "notes page": "SELECT id, title, updated_at FROM notes WHERE student_id = %(s)s",
    "note count": "SELECT count(*) FROM notes WHERE student_id = %(s)s",
    "notes per subject": "SELECT sub.name, count(*) FROM notes n JOIN subjects sub "
                         "ON sub.id = n.subject_id WHERE n.student_id = %(s)s GROUP BY sub.name",
    "due cards": "SELECT id, front FROM flashcards WHERE student_id = %(s)s AND due <= now() "
                 "ORDER BY due LIMIT 20",
    "AI history": "SELECT id, model, created_at FROM ai_interactions WHERE student_id = %(s)s "
                  "ORDER BY created_at DESC LIMIT 20",
    "note by id": "SELECT title, body FROM notes WHERE id = %(n)s",
}

FILLER_SQL = [
    """INSERT INTO subjects (id, code, name)
       SELECT md5('sub' || i)::uuid, 'SUB' || i, 'Subject ' || i FROM generate_series(1, 20) i""",
    """INSERT INTO users (id, email, password_hash)
       SELECT md5('u' || i)::uuid, 'user.' || i || '@example.org', 'x' || md5(i::text)
       FROM generate_series(1, %(n)s) i""",
    """INSERT INTO students (id, user_id, full_name, year_group)
       SELECT md5('s' || i)::uuid, md5('u' || i)::uuid, 'Student ' || i, 7 + i %% 7
       FROM generate_series(1, %(n)s) i""",
    """INSERT INTO notes (id, student_id, subject_id, title, body, updated_at)
       SELECT md5('n' || i)::uuid, md5('s' || (1 + i %% %(n)s))::uuid,
              md5('sub' || (1 + i %% 20))::uuid, 'Note ' || i,
              repeat('Photosynthesis converts light energy into chemical energy. ', 8),
              now() - (i %% 400) * interval '1 day'
       FROM generate_series(1, %(n)s * 20) i""",
    """INSERT INTO flashcards (id, student_id, subject_id, front, back, due)
       SELECT md5('f' || i)::uuid, md5('s' || (1 + i %% %(n)s))::uuid,
              md5('sub' || (1 + i %% 20))::uuid, 'Q ' || i, 'A ' || i,
              now() + (i %% 30 - 10) * interval '1 day'
       FROM generate_series(1, %(n)s * 60) i""",
    """INSERT INTO flashcard_reviews (student_id, flashcard_id, rating, reviewed_at, state,
                                      stability, difficulty, elapsed_days, scheduled_days, due)
       SELECT md5('s' || (1 + (i %% (%(n)s * 60)) %% %(n)s))::uuid,
              md5('f' || (i %% (%(n)s * 60)))::uuid, 1 + i %% 4,
              now() - (i %% 300) * interval '1 day', 2, 3.5, 5.0, 1, 3, now()
       FROM generate_series(1, %(n)s * 150) i WHERE i %% (%(n)s * 60) <> 0""",
    """INSERT INTO ai_interactions (student_id, model, prompt, response, prompt_tokens,
                                    completion_tokens, latency_ms)
       SELECT md5('s' || (1 + i %% %(n)s))::uuid, 'tutor-1', 'Explain topic ' || i,
              'An explanation.', 20, 80, 900
       FROM generate_series(1, %(n)s * 10) i""",
]


def say(msg: str) -> None:
    print(msg, flush=True)


def seed(profile, database: str, students: int) -> tuple[int, str]:
    try:
        from studyhub.ops.seed import seed_database  # lands from branch `seed`
    except ImportError:
        seed_database = None
    if seed_database is not None:
        result = seed_database(profile, students=students, database=database)
        return result.total_rows, "studyhub.ops.seed.seed_database"
    from studyhub.connect import connect

    with connect(profile, "app", database=database) as conn:
        for stmt in FILLER_SQL:
            conn.execute(stmt, {"n": students})
        conn.commit()
        total = conn.execute(
            "SELECT sum(n_live_tup) FROM pg_stat_user_tables WHERE schemaname = 'public'"
        ).fetchone()[0]
        rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in
                   ("users", "students", "subjects", "notes", "flashcards", "flashcard_reviews",
                    "ai_interactions"))
    del total
    return rows, "SQL filler (the seeder is not on this branch yet)"


def run_workload(profile, database: str, params: list[dict]) -> dict[str, float]:
    """Mean milliseconds per statement kind over the parameter list, after one untimed warm-up
    round (so before and after both run with warm caches)."""
    from studyhub.connect import connect

    times: dict[str, list[float]] = {k: [] for k in WORKLOAD}
    with connect(profile, "app", database=database, autocommit=True,
                 application_name="bench workload") as conn:
        for name, q in WORKLOAD.items():
            conn.execute(q, params[0]).fetchall()
        for p in params:
            for name, q in WORKLOAD.items():
                t0 = time.perf_counter()
                conn.execute(q, p).fetchall()
                times[name].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.mean(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=8500)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--home", default=DEFAULT_HOME)
    args = ap.parse_args()

    home = bench_home(args.home)
    from studyhub.connect import connect
    from studyhub.local import LocalCluster
    from studyhub.ops import migrate

    cluster = LocalCluster(home)
    cluster.up()
    profile = cluster.profile()
    database = f"bench_advise_{uuid.uuid4().hex[:6]}"
    cluster.create_database(database)
    try:
        migrate.upgrade(profile, database=database)
        t0 = time.perf_counter()
        rows, how = seed(profile, database, args.students)
        say(f"seeded {rows:,} rows for {args.students:,} students in "
            f"{time.perf_counter() - t0:.1f}s with {how}")
        if rows < 2_000_000:
            say("warning: fewer than 2M rows; raise --students")
        with connect(profile, "app", database=database, autocommit=True) as conn:
            conn.execute("DROP INDEX ix_notes_student_id")
            conn.execute("ANALYZE")
            students = [r[0] for r in conn.execute("SELECT id FROM students ORDER BY id")]
            notes = [r[0] for r in conn.execute("SELECT id FROM notes ORDER BY id LIMIT 5000")]
        with connect(profile, "ops", database=database, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database "
                         "WHERE datname = current_database()), 0)")
        rng = random.Random(7)
        params = [{"s": rng.choice(students), "n": rng.choice(notes)} for _ in range(args.rounds)]

        say(f"dropped ix_notes_student_id; workload: {len(WORKLOAD)} statements x "
            f"{args.rounds} rounds")
        before = run_workload(profile, database, params)

        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "studyhub.cli.main", "diag", "advise", "-d", database,
               "--apply", "--yes", "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "STUDYHUB_HOME": str(home)})
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            say(f"studyhub diag advise --apply --yes failed ({proc.returncode}): "
                f"{proc.stderr.strip()}")
            return 1
        out = json.loads(proc.stdout)
        report, built_all = out["advice"], out["built"]
        planned = sum(1 for s in report["statements"] if s["cost_before"] is not None)
        say(f"studyhub diag advise --apply --yes: {planned} statements planned, "
            f"{report['candidates_tried']} hypothetical indexes, {elapsed:.1f}s "
            f"(advice and build)")
        for rec in report["recommendations"]:
            saving = 100.0 * (1 - rec["cost_after"] / rec["cost_before"])
            say(f"  recommend {rec['create_sql']}  cost {rec['cost_before']:,.0f} -> "
                f"{rec['cost_after']:,.0f} ({saving:.0f}% less, "
                f"{len(rec['queryids'])} statements)")
        got = [(r["table"], r["columns"]) for r in report["recommendations"]]
        verdict = "OK" if got == [("notes", ["student_id"])] else "MISMATCH"
        say(f"expected exactly notes(student_id): {verdict}")
        for built in built_all:
            say(f"  built {built['index']} in {built['duration_s']:.1f}s "
                f"(valid={built['is_valid']})")

        with connect(profile, "app", database=database, autocommit=True) as conn:
            conn.execute("ANALYZE notes")
        after = run_workload(profile, database, params)

        say("")
        say(f"{'statement':<20}{'before ms':>12}{'after ms':>12}{'speed-up':>10}")
        for name in WORKLOAD:
            b, a = before[name], after[name]
            say(f"{name:<20}{b:>12.2f}{a:>12.2f}{b / a:>9.1f}x")
        tb, ta = sum(before.values()), sum(after.values())
        say(f"{'workload round':<20}{tb:>12.2f}{ta:>12.2f}{tb / ta:>9.1f}x")
        return 0 if verdict == "OK" else 1
    finally:
        cluster.drop_database(database)
        say(f"(cluster left running under {home}; remove with "
            f"STUDYHUB_HOME={home} uv run studyhub local destroy --yes)")


if __name__ == "__main__":
    sys.exit(main())
