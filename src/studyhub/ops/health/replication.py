"""Checks on replication: replay lag of every replica (or of this one, seen from itself) and
inactive replication slots."""

from __future__ import annotations

from studyhub.ops import replication
from studyhub.ops.health.registry import Check, CheckContext, _fmt_bytes, check, grade, worst


@check("replication_lag", needs_all_stats=True)
def replication_lag(ctx: CheckContext) -> Check:
    if ctx.conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        row = ctx.rows("get_replica_self_status")[0]
        gap = row["receive_replay_gap_bytes"] or 0
        secs = row["last_replay_age_s"] if gap > 0 else 0
        items = [{"name": "(this replica)", "replay_lag_bytes": gap, "replay_lag_s": secs,
                  "paused": row["replay_pause_state"] != "not paused"}]
    else:
        replicas, _ = replication.replication_from_primary(ctx.conn)
        if not replicas:
            return Check("replication_lag", "Replication lag", "ok", "no replicas", "-")
        items = [{"name": r.name, "state": r.state, "replay_lag_bytes": r.replay_lag_bytes,
                  "replay_lag_s": r.replay_lag_s} for r in replicas]
    wb, cb = ctx.t("replication_lag.warn_bytes"), ctx.t("replication_lag.critical_bytes")
    ws, cs = ctx.t("replication_lag.warn_s"), ctx.t("replication_lag.critical_s")
    statuses = []
    for it in items:
        statuses.append(grade(it["replay_lag_bytes"] or 0, wb, cb))
        statuses.append(grade(it["replay_lag_s"] or 0, ws, cs))
        if it.get("state") not in (None, "streaming"):
            statuses.append("warn")
    status = worst(statuses)
    max_b = max((it["replay_lag_bytes"] or 0) for it in items)
    max_s = max((it["replay_lag_s"] or 0) for it in items)
    return Check(
        "replication_lag", "Replication lag", status,
        f"{_fmt_bytes(max_b)}, {max_s:.1f}s ({len(items)} replica(s))",
        f"warn ≥{_fmt_bytes(wb)} or ≥{ws:g}s, critical ≥{_fmt_bytes(cb)} or ≥{cs:g}s",
        fix=None if status == "ok" else
        "see `studyhub diag replication` (replayed or paused? long queries on the replica? "
        "network?); route reads to the primary until it catches up",
        items=items)


@check("replication_slots")
def replication_slots(ctx: CheckContext) -> Check:
    slots = [replication.ReplicationSlot(**r) for r in ctx.rows("get_replication_slots")]
    inactive = [s for s in slots if not s.active]
    crit = ctx.t("replication_slots.critical_retained_bytes")
    status = "ok"
    if inactive:
        status = "critical" if any((s.retained_bytes or 0) >= crit for s in inactive) else "warn"
    return Check(
        "replication_slots", "Inactive replication slots", status,
        f"{len(inactive)} inactive of {len(slots)}",
        f"warn: any inactive, critical: one retains ≥{_fmt_bytes(crit)} of WAL",
        fix=None if status == "ok" else
        "an inactive slot keeps WAL forever and fills the disk: restart its consumer, or drop "
        "it with SELECT pg_drop_replication_slot('NAME');",
        items=[{"slot": s.slot_name, "type": s.slot_type, "retained_bytes": s.retained_bytes}
               for s in inactive])
