"""Indexes: what is wrong with them (``findings``: invalid, duplicate, unused, missing, bloated,
foreign keys without one — each with the DDL that fixes it) and building one safely
(``build``: CREATE INDEX CONCURRENTLY with lock_timeout, retries, clean-up and progress;
``build_index`` is the path every renderer takes, audited).

The findings work as the ops role (catalogs and statistics only); building an index needs the
table's owner (the app role).
"""

from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops.indexes.build import (
    APP_NAME,
    BuildProgress,
    IndexBuildError,
    IndexBuildResult,
    IndexPlan,
    build_index,
    check_index_target,
    create_index,
    ensure_outside_transaction,
    parse_table_name,
    plan_index,
    qualified_name,
)
from studyhub.ops.indexes.findings import (
    ForeignKeyWithoutIndex,
    IndexDef,
    IndexFinding,
    IndexReport,
    create_index_sql,
    drop_index_sql,
    duplicate_indexes,
    estimated_bloat,
    foreign_keys_without_index,
    index_definitions,
    index_name,
    index_report,
    invalid_indexes,
    missing_indexes,
    qualified,
    sole_foreign_key_indexes,
    unused_indexes,
)

__all__ = [
    "APP_NAME", "BuildProgress", "ForeignKeyWithoutIndex", "IndexBuildError", "IndexBuildResult",
    "IndexDef", "IndexFinding", "IndexPlan", "IndexReport", "RefusedError", "StudyhubError",
    "build_index", "check_index_target", "create_index", "create_index_sql", "drop_index_sql",
    "duplicate_indexes", "ensure_outside_transaction", "estimated_bloat",
    "foreign_keys_without_index", "index_definitions", "index_name", "index_report",
    "invalid_indexes", "missing_indexes", "parse_table_name", "plan_index", "qualified",
    "qualified_name", "sole_foreign_key_indexes", "unused_indexes",
]
