"""Benchmark: does POST /auth/register take as long for a taken address as for a new one?

1. Through the API (argon2 hash + the one registration statement + commit), new and taken
   addresses alternated, ``--requests`` of each: median, 10th and 90th percentile.
2. The database part alone (asyncpg, one transaction: the statement + COMMIT), new and taken
   alternated, with the statement as shipped and with its ``pg_logical_emit_message`` replaced
   by ``SELECT 1``: without that WAL record a taken address commits read-only, skipping the WAL
   flush a new account waits for.

No assertion is made on the numbers (a shared 2-core machine is noisy); they are printed. The
bench's own cluster lives under a new directory in /tmp and is destroyed at the end.

Run: uv run python bench/register_timing.py [--requests 200] [--statements 400]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

from common import bench_home  # bench/common.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

home = bench_home()

import asyncpg  # noqa: E402

from studyhub.api.routers.accounts import REGISTER_SQL  # noqa: E402
from studyhub.local import LocalCluster  # noqa: E402
from studyhub.ops import migrate  # noqa: E402
from tests.api_helpers import running_api  # noqa: E402

PARAMS = ("email", "password_hash", "full_name", "year_group", "school", "timezone")
MESSAGE = "SELECT pg_logical_emit_message(true, 'studyhub.register', '') AS lsn"


def spread(ms: list[float]) -> str:
    deciles = statistics.quantiles(ms, n=10)
    return (f"median {statistics.median(ms):7.2f} ms   p10 {deciles[0]:7.2f}   "
            f"p90 {deciles[-1]:7.2f}")


def through_the_api(profile, n: int) -> dict[str, list[float]]:
    taken = f"taken-{uuid.uuid4().hex}@bench.studyhub"
    times: dict[str, list[float]] = {"new": [], "taken": []}
    with running_api(profile) as api, api.client() as c:
        c.post("/auth/register", json={"email": taken, "password": "the owner's pw",
                                       "full_name": "Owner"})
        for _ in range(n):
            for kind in ("new", "taken"):
                email = taken if kind == "taken" else f"new-{uuid.uuid4().hex}@bench.studyhub"
                started = time.perf_counter()
                r = c.post("/auth/register", json={"email": email, "password": "some password",
                                                   "full_name": "Bench"})
                times[kind].append(1000 * (time.perf_counter() - started))
                assert r.status_code == 202, r.text
    return times


async def statement_only(cluster: LocalCluster, sql: str, n: int) -> dict[str, list[float]]:
    for i, name in enumerate(PARAMS, 1):
        sql = sql.replace(f":{name}", f"${i}")
    conn = await asyncpg.connect(host="127.0.0.1", port=cluster.load_state().primary_port,
                                 user="studyhub_app", database="studyhub",
                                 passfile=str(cluster.passfile))
    taken = f"taken-{uuid.uuid4().hex}@bench.studyhub"
    async with conn.transaction():
        await conn.execute(sql, taken, "hash", "Owner", None, None, "UTC")
    times: dict[str, list[float]] = {"new": [], "taken": []}
    try:
        for _ in range(n):
            for kind in ("new", "taken"):
                email = taken if kind == "taken" else f"new-{uuid.uuid4().hex}@bench.studyhub"
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(sql, email, "hash", "Bench", None, None, "UTC")
                times[kind].append(1000 * (time.perf_counter() - started))
    finally:
        await conn.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="API requests of each kind")
    ap.add_argument("--statements", type=int, default=400, help="statements of each kind")
    args = ap.parse_args()
    cluster = LocalCluster(home)
    cluster.up()
    profile = cluster.profile()
    migrate.upgrade(profile)

    api = through_the_api(profile, args.requests)
    print(f"1. POST /auth/register through the API ({args.requests} of each, alternated)")
    for kind in ("new", "taken"):
        print(f"   {kind:6} address   {spread(api[kind])}")

    shipped = str(REGISTER_SQL)
    assert MESSAGE in shipped
    print(f"\n2. the statement + COMMIT alone ({args.statements} of each, alternated)")
    for label, sql in (("as shipped (with the WAL message)", shipped),
                       ("without the WAL message", shipped.replace(MESSAGE, "SELECT 1 AS lsn"))):
        times = asyncio.run(statement_only(cluster, sql, args.statements))
        print(f"   {label}")
        for kind in ("new", "taken"):
            print(f"     {kind:6} address   {spread(times[kind])}")


if __name__ == "__main__":
    try:
        main()
    finally:
        LocalCluster(home).destroy()
        shutil.rmtree(home, ignore_errors=True)
