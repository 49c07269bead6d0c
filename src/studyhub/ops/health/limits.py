"""Checks on counters that run out: transaction ID wraparound headroom and sequences close
to their limit."""

from __future__ import annotations

from studyhub.ops.health.registry import Check, CheckContext, check, grade


@check("xid_wraparound")
def xid_wraparound(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_xid_age")
    top = rows[0] if rows else {"database": "-", "xid_age": 0}
    warn, crit = ctx.t("xid_wraparound.warn_age"), ctx.t("xid_wraparound.critical_age")
    status = grade(top["xid_age"], warn, crit)
    headroom = 2**31 - 3_000_000 - top["xid_age"]
    return Check(
        "xid_wraparound", "Transaction ID wraparound headroom", status,
        f"oldest XID age {top['xid_age']:,} in {top['database']} ({headroom:,} left)",
        f"warn ≥{warn:,.0f}, critical ≥{crit:,.0f}",
        fix=None if status == "ok" else
        f"VACUUM (FREEZE) the oldest tables of {top['database']}; look for long transactions "
        "and stale replication slots holding back the xmin",
        items=[r for r in rows if r["xid_age"] >= warn])


@check("sequences")
def sequences(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_sequence_usage")
    unreadable = [r for r in rows if r["last_value"] is None]
    items = []
    for r in rows:
        if r["last_value"] is None or not r["limit_value"]:
            continue
        pct = 100.0 * r["last_value"] / r["limit_value"]
        items.append({"sequence": f"{r['schema']}.{r['sequence']}", "used_pct": round(pct, 2),
                      "last_value": r["last_value"], "limit": r["limit_value"],
                      "column": f"{r['owned_by_table']}.{r['owned_by_column']}"
                      if r["owned_by_column"] else None})
    warn, crit = ctx.t("sequences.warn_pct"), ctx.t("sequences.critical_pct")
    top = max((i["used_pct"] for i in items), default=0.0)
    status = grade(top, warn, crit)
    return Check(
        "sequences", "Sequences close to their limit", status,
        f"highest {top:.1f}% ({len(rows)} sequence(s))",
        f"warn ≥{warn:g}%, critical ≥{crit:g}%",
        fix=None if status == "ok" else
        "change the column (and sequence) to bigint before it runs out",
        detail=(f"{len(unreadable)} sequence(s) not readable by this role (last_value hidden)"
                if unreadable else None),
        items=[i for i in items if i["used_pct"] >= warn])
