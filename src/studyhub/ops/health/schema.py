"""Checks on indexes and constraints: invalid indexes, constraints not validated, duplicate
and unused indexes, foreign keys without a supporting index."""

from __future__ import annotations

from studyhub.ops import indexes
from studyhub.ops.health.registry import (
    Check,
    CheckContext,
    _fmt_bytes,
    _fmt_s,
    _join_fixes,
    check,
)


@check("invalid_indexes")
def invalid_indexes(ctx: CheckContext) -> Check:
    found = indexes.invalid_indexes(indexes.index_definitions(ctx.conn))
    return Check(
        "invalid_indexes", "Invalid indexes", "warn" if found else "ok", len(found), "any",
        fix=None if not found else
        "drop and rebuild them: " + _join_fixes([f.fix_sql for f in found]),
        detail="often left by a failed CREATE INDEX CONCURRENTLY" if found else None,
        items=[{"index": f.index, "table": f.table, "fix_sql": f.fix_sql} for f in found])


@check("invalid_constraints")
def invalid_constraints(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_invalid_constraints")
    return Check(
        "invalid_constraints", "Constraints not validated", "warn" if rows else "ok", len(rows),
        "any",
        fix=None if not rows else
        "validate each (takes only a SHARE UPDATE EXCLUSIVE lock): ALTER TABLE t VALIDATE "
        "CONSTRAINT c;",
        items=rows)


@check("duplicate_indexes")
def duplicate_indexes(ctx: CheckContext) -> Check:
    found = indexes.duplicate_indexes(indexes.index_definitions(ctx.conn))
    return Check(
        "duplicate_indexes", "Duplicate / redundant indexes", "warn" if found else "ok",
        len(found), "any",
        fix=None if not found else _join_fixes([f.fix_sql for f in found]),
        items=[{"index": f.index, "covered_by": f.covered_by, "table": f.table,
                "size_bytes": f.size_bytes, "fix_sql": f.fix_sql} for f in found])


@check("unused_indexes")
def unused_indexes(ctx: CheckContext) -> Check:
    min_bytes, min_window = ctx.t("unused_indexes.min_bytes"), ctx.t("unused_indexes.min_window_s")
    found = [f for f in indexes.unused_indexes(indexes.index_definitions(ctx.conn),
                                               indexes.sole_foreign_key_indexes(ctx.conn))
             if f.size_bytes >= min_bytes]
    window = ctx.rows("get_statistics_window")[0]
    threshold = (f"never scanned in ≥{_fmt_s(min_window)} of statistics, "
                 f"≥{_fmt_bytes(min_bytes)}, not the only index of a foreign key")
    items = [{"index": f.index, "table": f.table, "size_bytes": f.size_bytes,
              "fix_sql": f.fix_sql} for f in found]
    value = f"{len(found)} ({_fmt_bytes(sum(f.size_bytes for f in found))})"
    since = "the statistics reset" if window["since_reset"] else "the server started"
    if found and window["window_s"] < min_window:
        # Minutes after a restart, a restore or a bulk load every index looks unused.
        return Check("unused_indexes", "Unused indexes", "ok",
                     f"{value}, not judged: {_fmt_s(window['window_s'])} since {since}",
                     threshold, items=items,
                     detail="candidates only: an index is judged unused after "
                            f"{_fmt_s(min_window)} of statistics without a scan")
    return Check(
        "unused_indexes", "Unused indexes", "warn" if found else "ok", value, threshold,
        fix=None if not found else
        "check the replica's statistics too, then: " + _join_fixes([f.fix_sql for f in found]),
        detail=f"statistics cover {_fmt_s(window['window_s'])} (since {since})" if found else None,
        items=items)


@check("foreign_keys_without_index")
def foreign_keys_without_index(ctx: CheckContext) -> Check:
    min_bytes = ctx.t("foreign_keys_without_index.min_table_bytes")
    found = [f for f in indexes.foreign_keys_without_index(ctx.conn)
             if f.table_bytes >= min_bytes]
    return Check(
        "foreign_keys_without_index", "Foreign keys without a supporting index",
        "warn" if found else "ok", len(found), "any",
        fix=None if not found else _join_fixes([f.fix_sql for f in found]),
        detail="each delete on the referenced table scans the referencing one" if found else None,
        items=[{"table": f.table, "constraint": f.constraint, "columns": f.columns,
                "fix_sql": f.fix_sql} for f in found])
