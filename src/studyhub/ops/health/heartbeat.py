"""The agent's own heartbeat (``agent_heartbeat``): every ``studyhub agent`` watching a profile
upserts a row in ``ops.agent_heartbeats`` while it runs; a row that stops moving means the agent
died, hangs or lost the database — and nothing else (scheduled backups, drills, alerts) runs.

An agent is expected once one has ever beaten for this profile: no rows at all is ``ok``
("no agent has run"). A retired agent's row stays until deleted (the fix says how). Read as the
ops role (SELECT granted by migration 0010; read with ``ops.agent_records.heartbeats``, what
``agent status`` shows), ages by the server's clock.
"""

from __future__ import annotations

from typing import Any

import psycopg

from studyhub.humanize import human_s
from studyhub.ops import agent_records
from studyhub.ops.health.registry import Check, CheckContext, _fmt_s, check, grade, worst

TITLE = "Agent heartbeat"
TABLE = "ops.agent_heartbeats"


def _item(beat: agent_records.HeartbeatRecord, warn: float, crit: float) -> dict[str, Any]:
    age = max(0.0, beat.age_s or 0.0)
    return {"agent": beat.agent, "host": beat.host, "pid": beat.pid,
            "started_at": beat.started_at.isoformat(timespec="seconds"),
            "beat_at": beat.beat_at.isoformat(timespec="seconds"),
            "age_s": round(age, 1), "status": grade(age, warn, crit)}


@check("agent_heartbeat")
def agent_heartbeat(ctx: CheckContext) -> Check:
    warn, crit = ctx.t("agent_heartbeat.warn_s"), ctx.t("agent_heartbeat.critical_s")
    threshold = f"warn ≥{_fmt_s(warn)}, critical ≥{_fmt_s(crit)} since the last beat"
    if ctx.profile is None:
        return Check("agent_heartbeat", TITLE, "ok", "n/a", threshold,
                     detail="agents beat per profile: run the doctor for a profile")
    try:
        exists, readable = ctx.rows("get_table_readable", {"name": TABLE})[0].values()
    except psycopg.errors.InsufficientPrivilege:  # no USAGE on schema ops
        if not ctx.conn.autocommit:
            ctx.conn.rollback()
        exists, readable = True, False
    if not exists:
        return Check("agent_heartbeat", TITLE, "ok", "no agent has run", threshold,
                     detail=f"{TABLE} is missing (run: studyhub migrate up); an agent needs it "
                     "to run, so none has run against this database")
    if not readable:
        return Check("agent_heartbeat", TITLE, "warn", "cannot tell", threshold,
                     fix=f"run the doctor as the ops role (migration 0010 grants it SELECT), or: "
                     f"GRANT USAGE ON SCHEMA ops TO {ctx.conn.info.user}; "
                     f"GRANT SELECT ON {TABLE} TO {ctx.conn.info.user};",
                     detail=f"role {ctx.conn.info.user} may not read {TABLE}")
    rows = agent_records.heartbeats(ctx.conn, ctx.profile.name)
    if not rows:
        return Check("agent_heartbeat", TITLE, "ok", "no agent has run", threshold,
                     detail="no agent has ever beaten for this profile, so none is expected; "
                     "start one with `studyhub agent run` to get schedules and alerts")
    items = [_item(r, warn, crit) for r in rows]
    status = worst([i["status"] for i in items])
    value = "; ".join(f"{i['agent']}@{i['host']}: {human_s(i['age_s'])} ago" for i in items)
    fix = detail = None
    if status != "ok":
        stale = [i for i in items if i["status"] != "ok"]
        names = ", ".join(i["agent"] for i in stale)
        fix = ("start it: `studyhub agent run` (or `systemctl status studyhub-agent` and "
               "`journalctl -u studyhub-agent` on its host); an agent retired on purpose: "
               "DELETE FROM ops.agent_heartbeats WHERE agent = 'NAME' AND profile = "
               f"'{ctx.profile.name}';")
        detail = (f"agent {names} stopped beating: nothing it schedules (doctor, backups, "
                  "drills, history, alerts) runs")
    return Check("agent_heartbeat", TITLE, status, value, threshold, fix=fix, detail=detail,
                 items=items)
