"""Checks on replication: replay lag of every replica (or of this one, seen from itself), whether
every replica that was set up is there and streaming (``replicas``: a physical slot without its
consumer is a replica gone), and inactive replication slots (the WAL they hold back)."""

from __future__ import annotations

from typing import Any

from studyhub.ops import replication
from studyhub.ops.health.registry import Check, CheckContext, _fmt_bytes, check, grade, worst

# A walsender in this state serves pg_basebackup, not a replica.
BASE_BACKUP_STATE = "backup"


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
                  "replay_lag_s": r.replay_lag_s} for r in replicas
                 if r.state != BASE_BACKUP_STATE]
        if not items:
            return Check("replication_lag", "Replication lag", "ok", "no replicas", "-")
    wb, cb = ctx.t("replication_lag.warn_bytes"), ctx.t("replication_lag.critical_bytes")
    ws, cs = ctx.t("replication_lag.warn_s"), ctx.t("replication_lag.critical_s")
    statuses = []
    for it in items:
        statuses.append(grade(it["replay_lag_bytes"] or 0, wb, cb))
        statuses.append(grade(it["replay_lag_s"] or 0, ws, cs))
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


def _replica_items(replicas: list[replication.ReplicaLag],
                   slots: list[replication.ReplicationSlot]) -> list[dict[str, Any]]:
    """One item per replica the primary knows of: each physical slot (a replica set up to use
    it) with the walsender consuming it, if any, and each walsender without a slot."""
    senders = {r.pid: r for r in replicas if r.state != BASE_BACKUP_STATE}
    items = []
    for s in slots:
        if s.slot_type != "physical":
            continue
        r = senders.pop(s.active_pid, None) if s.active_pid is not None else None
        if r is None:
            items.append({"replica": None, "slot": s.slot_name, "state": None,
                          "status": "critical",
                          "problem": f"gone: slot {s.slot_name} has no replica connected"})
        else:
            items.append({"replica": r.name, "slot": s.slot_name, "state": r.state,
                          "status": "ok" if r.state == "streaming" else "warn",
                          "problem": None if r.state == "streaming" else f"not streaming ({r.state})"})
    for r in senders.values():
        items.append({"replica": r.name, "slot": None, "state": r.state,
                      "status": "ok" if r.state == "streaming" else "warn",
                      "problem": None if r.state == "streaming" else f"not streaming ({r.state})"})
    return items


@check("replicas", needs_all_stats=True)
def replicas(ctx: CheckContext) -> Check:
    """A replica set up with a physical slot (the local cluster's, DigitalOcean's read-only
    nodes) whose slot has no consumer is gone: critical. One connected but not streaming
    (startup, catchup) warns. On a replica: no WAL receiver is critical (cut off)."""
    title = "Replicas connected and streaming"
    threshold = "slot without its replica: critical; not streaming: warn"
    if ctx.conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        status_ = ctx.rows("get_replica_self_status")[0]["receiver_status"]
        if status_ == "streaming":
            return Check("replicas", title, "ok", "this replica streams from its primary",
                         threshold)
        return Check("replicas", title, "critical" if status_ is None else "warn",
                     f"this replica's WAL receiver: {status_ or 'none'}", threshold,
                     fix="check primary_conninfo and that the primary is up and reachable "
                     "(the replica's server log says why it cannot connect)",
                     detail="a replica without a WAL receiver falls further behind every second")
    found, slots = replication.replication_from_primary(ctx.conn)
    items = _replica_items(found, slots)
    if not items:
        return Check("replicas", title, "ok", "no replicas", threshold)
    status = worst([i["status"] for i in items])
    gone = [i for i in items if i["status"] == "critical"]
    waiting = [i for i in items if i["status"] == "warn"]
    value = f"{len(items) - len(gone) - len(waiting)} of {len(items)} streaming"
    if gone:
        value += f"; gone: {', '.join(i['slot'] for i in gone)}"
    if waiting:
        value += f"; not streaming: {', '.join(str(i['replica']) for i in waiting)}"
    fix = None
    if gone:
        fix = ("start the replica (local: studyhub local up --replica; DigitalOcean: the "
               "node's status in the control panel); a replica removed on purpose: drop its slot "
               "(SELECT pg_drop_replication_slot('NAME');) so it stops holding WAL")
    elif waiting:
        fix = "wait for it to catch up; see `studyhub diag replication`"
    return Check("replicas", title, status, value, threshold, fix=fix,
                 detail="reads routed to a replica that is gone fail; its slot holds WAL on the "
                 "primary until the disk fills" if gone else None, items=items)


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
