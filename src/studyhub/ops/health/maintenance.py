"""Checks on how tables are kept: the buffer cache hit ratio and tables overdue for VACUUM or
ANALYZE."""

from __future__ import annotations

from studyhub.ops.health.registry import Check, CheckContext, check


def judge_cache_hit(hits: int, reads: int, database_blocks: int, *, warn_pct: float,
                    critical_pct: float, min_reads: float) -> tuple[str, str, str, str | None]:
    """(status, value, threshold, fix) for the buffer cache hit ratio. Too few accesses, or no
    more reads than the tables' blocks (each may be a block's first touch after a restart or a
    bulk load), say nothing about whether the working set fits: reported ok with "n/a"."""
    total = hits + reads
    if total == 0 or total < min_reads:
        return ("ok", f"n/a ({total:,} block accesses)",
                f"measured once ≥{min_reads:,.0f} block accesses", None)
    pct = 100.0 * hits / total
    if reads <= database_blocks:
        return ("ok", f"n/a, cold cache ({pct:.2f}%: {reads:,} reads ≤ {database_blocks:,} "
                      f"blocks in the tables)",
                "judged once reads exceed the tables' size in blocks", None)
    status = "critical" if pct < critical_pct else "warn" if pct < warn_pct else "ok"
    fix = None if status == "ok" else (
        "the working set does not fit in shared_buffers: add memory (a bigger plan) or cut "
        "what queries read (see `studyhub diag slow-queries --sort io`)")
    return status, f"{pct:.2f}%", f"warn <{warn_pct:g}%, critical <{critical_pct:g}%", fix


@check("cache_hit")
def cache_hit(ctx: CheckContext) -> Check:
    r = ctx.rows("get_cache_hit_ratio")[0]
    status, value, threshold, fix = judge_cache_hit(
        r["table_hits"] + r["index_hits"], r["table_reads"] + r["index_reads"],
        r["database_blocks"], warn_pct=ctx.t("cache_hit.warn_pct"),
        critical_pct=ctx.t("cache_hit.critical_pct"), min_reads=ctx.t("cache_hit.min_reads"))
    return Check(
        "cache_hit", "Cache hit ratio", status, value, threshold, fix=fix,
        detail=f"tables {r['table_hits']:,} hits / {r['table_reads']:,} reads; "
               f"indexes {r['index_hits']:,} / {r['index_reads']:,}")


@check("vacuum")
def vacuum(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_vacuum_status")
    dead_pct, min_dead = ctx.t("vacuum.warn_dead_pct"), ctx.t("vacuum.min_dead_rows")
    mod_pct, min_mod = ctx.t("analyze.warn_modified_pct"), ctx.t("analyze.min_modified_rows")
    items = []
    for r in rows:
        live, dead, mod = r["live_rows"] or 0, r["dead_rows"] or 0, r["modified_since_analyze"] or 0
        pct = 100.0 * dead / (live + dead) if live + dead else 0.0
        needs_vacuum = dead >= min_dead and pct >= dead_pct
        mpct = 100.0 * mod / live if live else (100.0 if mod else 0.0)
        needs_analyze = mod >= min_mod and mpct >= mod_pct
        if needs_vacuum or needs_analyze:
            name = r["table"] if r["schema"] == "public" else f"{r['schema']}.{r['table']}"
            items.append({"table": name, "dead_rows": dead, "dead_pct": round(pct, 1),
                          "modified_since_analyze": mod, "needs_vacuum": needs_vacuum,
                          "needs_analyze": needs_analyze,
                          "last_vacuum": r["last_vacuum"], "last_analyze": r["last_analyze"]})
    fixes = [f"VACUUM (ANALYZE) {i['table']};" if i["needs_vacuum"] else f"ANALYZE {i['table']};"
             for i in items]
    return Check(
        "vacuum", "Tables overdue for VACUUM / ANALYZE", "warn" if items else "ok", len(items),
        f"dead ≥{dead_pct:g}% and ≥{min_dead:,.0f} rows; changed ≥{mod_pct:g}% and "
        f"≥{min_mod:,.0f} rows since ANALYZE",
        fix=" ".join(fixes) + " (as the table owner; check why autovacuum fell behind)"
        if items else None,
        items=items)
