"""Realistic, deterministic demo data (``studyhub seed``): ``seed_database`` loads students and
everything they own in one transaction, with binary COPY.

Modules: ``load`` (the load: rule check, schema check, keys and indexes dropped and rebuilt,
the producer thread, the audit line), ``rows`` (the rows, encoded for binary COPY), ``tables``
(the dataset's clock, tables and columns in COPY order, rows per student), ``histories``
(FSRS review histories from the real scheduler), ``words`` (names, subjects and text).
"""

from __future__ import annotations

from studyhub.ops.seed.load import (
    BATCH_STUDENTS,
    DEFAULT_SEED,
    SchemaPiece,
    SeedError,
    SeedProgress,
    SeedResult,
    check_seed_allowed,
    expected_rows,
    rebuildable_pieces,
    seed_database,
)
from studyhub.ops.seed.tables import DATASET_NOW, SCHOOL_YEAR_START, SEEDED_TABLES, TABLE_COLUMNS

__all__ = [
    "BATCH_STUDENTS", "DATASET_NOW", "DEFAULT_SEED", "SCHOOL_YEAR_START", "SEEDED_TABLES",
    "TABLE_COLUMNS", "SchemaPiece", "SeedError", "SeedProgress", "SeedResult",
    "check_seed_allowed", "expected_rows", "rebuildable_pieces", "seed_database",
]
