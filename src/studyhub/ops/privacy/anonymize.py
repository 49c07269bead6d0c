"""Pseudonymised analytics exports: what the data team may use instead of raw tables.

- Identifiers become keyed pseudonyms (HMAC-SHA256 under a secret key, see ``pseudonym``):
  stable across runs with the same key, not recomputable without it. ``md5(email)`` — the
  runbook's "anonymisation" — is reversed by hashing a list of emails; this is not.
- No free text (notes, card sides, prompts, answers), no email, name, school, birth date or
  time zone. Times are coarsened to the day (the month for when a student joined).
- Small groups are suppressed: a row is dropped when its combination of quasi-identifiers
  (year group, subject ...) is shared by fewer than ``min_group`` students (k-anonymity on
  those columns).
- Per-student aggregates (the ``students`` dataset) are never exact: activity counts become
  bands (0, 1-9, 10-49, 50-199, 200-999, 1000+) and, like the join date, are quasi-identifiers.
  The dataset is generalised step by step (join month → quarter → year → none, bands → coarser
  bands) until at most ``MAX_SUPPRESSED_FRACTION`` of the students fall in groups smaller than
  ``min_group``; whatever is still in a small group is suppressed. Every released row of it is
  then shared, on all its columns but the pseudonym, by at least ``min_group`` students.

The output is still *pseudonymised personal data* (GDPR recital 26): rows of one student are
linked by their pseudonym. docs/privacy.md says what remains personal and who may hold it.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import psycopg
from psycopg import sql

from studyhub.atomic_file import write_atomically
from studyhub.audit import audited
from studyhub.connect import connect
from studyhub.errors import StudyhubError
from studyhub.ops.privacy.pseudonym import PseudonymKey
from studyhub.ops.queries import load
from studyhub.profiles import Profile

DEFAULT_MIN_GROUP = 5
MAX_SUPPRESSED_FRACTION = 0.05  # generalise further while more students than this are dropped
BATCH_ROWS = 20_000
Format = Literal["csv", "parquet"]


@dataclass(frozen=True)
class Level:
    """One step of generalisation: the query's parameters and what they mean, in words."""

    description: str
    params: dict[str, Any]


EXACT = (Level("as recorded (days)", {}),)
FINE_BANDS = [0, 1, 10, 50, 200, 1000]  # 0, 1-9, 10-49, 50-199, 200-999, 1000+
FINE_SUBJECTS = [0, 1, 3, 5]  # 0, 1-2, 3-4, 5+
COARSE_BANDS = [0, 1, 50, 1000]  # 0, 1-49, 50-999, 1000+
COARSE_SUBJECTS = [0, 1, 5]  # 0, 1-4, 5+


def _students_level(joined: str, joined_format: str, bands: list[int],
                    subjects: list[int]) -> Level:
    def show(bounds: list[int]) -> str:
        return ", ".join(f"{lo}+" if hi is None else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"
                         for lo, hi in zip(bounds, [*bounds[1:], None]))

    return Level(f"joined: {joined}; counts in bands {show(bands)}; subjects {show(subjects)}",
                 {"joined_format": joined_format, "count_bounds": bands,
                  "subject_bounds": subjects})


STUDENT_LEVELS = (
    _students_level("month", "YYYY-MM", FINE_BANDS, FINE_SUBJECTS),
    _students_level("quarter", 'YYYY-"Q"Q', FINE_BANDS, FINE_SUBJECTS),
    _students_level("year", "YYYY", FINE_BANDS, FINE_SUBJECTS),
    _students_level("year", "YYYY", COARSE_BANDS, COARSE_SUBJECTS),
    _students_level("not released", '"-"', COARSE_BANDS, COARSE_SUBJECTS),
    _students_level("not released", '"-"', [0, 1, 1000], [0, 1]),
)


@dataclass(frozen=True)
class Dataset:
    query: str  # ops/sql/<query>.sql
    pseudonyms: dict[str, tuple[str, str]]  # source column → (output column, pseudonym domain)
    quasi_identifiers: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # output column, arrow type
    levels: tuple[Level, ...] = EXACT  # finest first


DATASETS: dict[str, Dataset] = {
    "reviews": Dataset(
        "get_analytics_reviews",
        {"student_id": ("student", "student"), "flashcard_id": ("card", "card")},
        ("year_group", "subject"),
        (("student", "string"), ("card", "string"), ("subject", "string"),
         ("year_group", "int16"), ("review_day", "date32"), ("rating", "int16"),
         ("state", "int16"), ("stability", "float64"), ("difficulty", "float64"),
         ("elapsed_days", "float64"), ("scheduled_days", "float64"),
         ("review_duration_ms", "int32")),
    ),
    "sessions": Dataset(
        "get_analytics_sessions",
        {"student_id": ("student", "student")},
        ("year_group", "subject"),
        (("student", "string"), ("subject", "string"), ("year_group", "int16"),
         ("session_day", "date32"), ("duration_min", "int32"), ("cards_reviewed", "int32")),
    ),
    "ai_usage": Dataset(
        "get_analytics_ai_usage",
        {"student_id": ("student", "student")},
        ("year_group", "subject", "model"),
        (("student", "string"), ("subject", "string"), ("year_group", "int16"),
         ("model", "string"), ("day", "date32"), ("prompt_tokens", "int32"),
         ("completion_tokens", "int32"), ("latency_ms", "int32")),
    ),
    "students": Dataset(
        "get_analytics_students",
        {"student_id": ("student", "student")},
        ("year_group", "joined", "subjects_band", "notes_band", "flashcards_band",
         "reviews_band", "ai_interactions_band"),
        (("student", "string"), ("year_group", "int16"), ("joined", "string"),
         ("subjects_band", "string"), ("notes_band", "string"), ("flashcards_band", "string"),
         ("reviews_band", "string"), ("ai_interactions_band", "string")),
        STUDENT_LEVELS,
    ),
}


@dataclass
class AnonymizeResult:
    path: str
    dataset: str
    format: str
    rows_written: int
    rows_suppressed: int
    groups_suppressed: int
    min_group: int
    quasi_identifiers: list[str]
    generalisation: str  # the level chosen (students: join date granularity and count bands)
    level: int  # 0 = finest; len(levels) - 1 = coarsest
    key_source: str
    duration_s: float


def _dataset_sql(name: str) -> sql.SQL:
    return sql.SQL(load(name).strip().rstrip(";"))


def _group_sizes(conn: psycopg.Connection, ds: Dataset, level: Level) -> dict[tuple, int]:
    qi = sql.SQL(", ").join(sql.Identifier(c) for c in ds.quasi_identifiers)
    query = sql.SQL(
        "SELECT {qi}, count(DISTINCT student_id) FROM ({base}) AS d GROUP BY {qi}"
    ).format(qi=qi, base=_dataset_sql(ds.query))
    return {tuple(r[:-1]): r[-1] for r in conn.execute(query, level.params or None)}


def _choose_level(conn: psycopg.Connection, ds: Dataset, min_group: int
                  ) -> tuple[int, set[tuple]]:
    """The finest level at which at most MAX_SUPPRESSED_FRACTION of the students are in groups
    smaller than ``min_group`` (else the level that suppresses fewest), and its small groups."""
    best: tuple[int, int, set[tuple]] | None = None
    for i, level in enumerate(ds.levels):
        sizes = _group_sizes(conn, ds, level)
        small = {g for g, n in sizes.items() if n < min_group}
        dropped = sum(sizes[g] for g in small)
        if dropped <= MAX_SUPPRESSED_FRACTION * sum(sizes.values()):
            return i, small
        if best is None or dropped < best[1]:
            best = (i, dropped, small)
    assert best is not None
    return best[0], best[2]


def anonymize(conn: psycopg.Connection, key: PseudonymKey, out: Path, *,
              dataset: str = "reviews", fmt: Format = "csv",
              min_group: int = DEFAULT_MIN_GROUP, overwrite: bool = False) -> AnonymizeResult:
    """Write ``dataset`` pseudonymised to ``out`` (0600, atomic), from one consistent snapshot."""
    started = time.monotonic()
    if dataset not in DATASETS:
        raise StudyhubError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if fmt not in ("csv", "parquet"):
        raise StudyhubError(f"unknown format {fmt!r}; choose csv or parquet")
    if min_group < 1:
        raise StudyhubError("--min-group must be at least 1")
    ds = DATASETS[dataset]
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise StudyhubError(f"{out} already exists; choose another name (nothing was written)")
    saved = (conn.isolation_level, conn.read_only)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    stats = {"written": 0, "suppressed": 0}
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('TimeZone', 'UTC', true)")
            level, small = _choose_level(conn, ds, min_group)
            cur = conn.cursor(name="studyhub_anonymize")
            cur.itersize = BATCH_ROWS
            cur.execute(_dataset_sql(ds.query), ds.levels[level].params or None)
            names = [d.name for d in cur.description]
            qi_idx = [names.index(c) for c in ds.quasi_identifiers]
            ps_idx = {names.index(src): domain for src, (_, domain) in ds.pseudonyms.items()}
            out_names = [ds.pseudonyms[n][0] if n in ds.pseudonyms else n for n in names]
            if out_names != [c for c, _ in ds.columns]:
                raise StudyhubError(f"dataset {dataset}: query columns {out_names} do not match "
                                    "its declared output")
            cache: dict[tuple[str, Any], str] = {}

            def rows_in_batches():
                while batch := cur.fetchmany(BATCH_ROWS):
                    kept = []
                    for row in batch:
                        if tuple(row[i] for i in qi_idx) in small:
                            stats["suppressed"] += 1
                            continue
                        row = list(row)
                        for i, domain in ps_idx.items():
                            ck = (domain, row[i])
                            p = cache.get(ck)
                            if p is None:
                                p = cache[ck] = key.pseudonym(domain, row[i])
                            row[i] = p
                        kept.append(row)
                    stats["written"] += len(kept)
                    yield kept

            writer = _write_parquet if fmt == "parquet" else _write_csv
            write_atomically(out, lambda f: writer(f, ds, rows_in_batches()),
                             overwrite=overwrite)
            cur.close()
    finally:
        conn.isolation_level, conn.read_only = saved
    return AnonymizeResult(str(out), dataset, fmt, stats["written"], stats["suppressed"],
                           len(small), min_group, list(ds.quasi_identifiers),
                           ds.levels[level].description, level, key.source,
                           round(time.monotonic() - started, 3))


def run_anonymize(profile: Profile, key: PseudonymKey, out: Path, *, dataset: str = "reviews",
                  fmt: Format = "csv", min_group: int = DEFAULT_MIN_GROUP) -> AnonymizeResult:
    """``studyhub privacy anonymize``: connect as the app role, write the dataset
    (``anonymize``) and the audit line ``privacy.anonymize`` (also when it fails)."""
    with audited("privacy.anonymize", profile.name, dataset=dataset, format=fmt,
                 min_group=min_group, key_source=key.source) as line:
        with connect(profile, "app", application_name="studyhub privacy anonymize") as conn:
            result = anonymize(conn, key, out, dataset=dataset, fmt=fmt, min_group=min_group)
        line.update(rows_written=result.rows_written, rows_suppressed=result.rows_suppressed)
    return result


def _write_csv(f: BinaryIO, ds: Dataset, batches) -> None:
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    w = csv.writer(text)
    w.writerow([c for c, _ in ds.columns])
    for batch in batches:
        w.writerows(batch)
    text.flush()
    text.detach()


def _write_parquet(f: BinaryIO, ds: Dataset, batches) -> None:
    # Deferred: pyarrow.parquet takes ~0.1 s to import and only --format parquet needs it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, getattr(pa, t)()) for c, t in ds.columns])
    with pq.ParquetWriter(f, schema, compression="zstd") as pw:
        for batch in batches:
            if batch:
                cols = list(zip(*batch))
                pw.write_table(pa.Table.from_arrays(
                    [pa.array(col, type=schema.field(i).type) for i, col in enumerate(cols)],
                    schema=schema))
