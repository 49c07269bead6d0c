"""``diag history``: an incident summarised from the agent's activity history (longest lock
waits, root blockers, top wait events, peaks)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from studyhub.cli.common import (
    JsonOpt,
    ProfileOpt,
    ServerWideDatabaseOpt,
    console,
    ops_connection,
    print_json,
    to_jsonable,
)
from studyhub.errors import StudyhubError
from studyhub.humanize import human_s, short
from studyhub.ops import history as ops_history

APP_NAME = "studyhub diag"


def _t(value: datetime | None) -> str:
    return "-" if value is None else f"{value.astimezone():%Y-%m-%d %H:%M:%S}"


def history(
    from_: Annotated[str, typer.Option(
        "--from", help="Start of the window: '2026-12-02 09:30' (local time) or ISO 8601.")],
    to: Annotated[str | None, typer.Option(
        "--to", help="End of the window (default: now).")] = None,
    profile: ProfileOpt = None,
    database: ServerWideDatabaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Summarise an incident from the agent's activity history: the longest lock waits, the
    root blockers (how many sessions they blocked and for how long), the top wait events and
    the peaks. Runs as the ops role."""
    start = ops_history.parse_when(from_, what="--from time")
    end = ops_history.parse_when(to, what="--to time") if to else datetime.now(timezone.utc)
    if end <= start:
        raise StudyhubError(f"--to ({_t(end)}) must be after --from ({_t(start)})")
    prof, conn = ops_connection(profile, database, application_name=APP_NAME)
    with conn:
        summary = ops_history.summarize(conn, start, end)
        span = ops_history.history_range(conn) if not summary.snapshots else None
    if span is not None:
        held = ("the history is empty (is `studyhub agent` sampling?)" if not span.snapshots
                else f"the history holds {_t(span.first_at)} to {_t(span.last_at)}")
        raise StudyhubError(f"no activity snapshots between {_t(start)} and {_t(end)}: {held}")
    if json_:
        print_json({"profile": prof.name, **to_jsonable(summary)})
        return
    every = f" every {human_s(summary.interval_s)}" if summary.interval_s else ""
    console.print(Text.assemble(
        ("history", "bold"), f" · {prof.name}: {_t(summary.first_at)} to {_t(summary.last_at)}, "
        f"{summary.snapshots} snapshots{every}"))
    console.print(
        f"peak {summary.peak_sessions} sessions at {_t(summary.peak_sessions_at)} "
        f"(most active at once: {summary.peak_active}); most waiting for a lock: "
        f"{summary.peak_waiting}" + (f" at {_t(summary.peak_waiting_at)}"
                                     if summary.peak_waiting else "")
        + f"; longest transaction {human_s(summary.longest_transaction_s)}")
    if summary.root_blockers:
        t = Table(title="root blockers", title_justify="left")
        for col in ("pid", "who", "state", "holds", "blocked", "most at once", "blocked for",
                    "seen", "query"):
            t.add_column(col)
        for b in summary.root_blockers:
            t.add_row(str(b.pid), f"{b.role or '?'}@{b.database or '?'} {b.application}",
                      b.state, f"{b.held_mode} on {b.held_object}" if b.held_mode else "",
                      str(b.blocked_sessions), str(b.most_blocked_at_once),
                      human_s(b.blocked_for_s),
                      f"{_t(b.first_seen)} – {b.last_seen.astimezone():%H:%M:%S}",
                      short(b.query, 60) or (f"query id {b.query_id}" if b.query_id else ""))
        console.print(t)
    else:
        console.print("no session waited for a lock in this window")
    if summary.longest_waits:
        t = Table(title="longest lock waits", title_justify="left")
        for col in ("pid", "who", "waited for", "wait", "blocked by", "root", "seen", "query"):
            t.add_column(col)
        for w in summary.longest_waits:
            t.add_row(str(w.pid), f"{w.role or '?'}@{w.database or '?'} {w.application}",
                      f"{w.lock_mode} on {w.lock_object or w.lock_type or '?'}",
                      human_s(w.wait_s), ",".join(map(str, w.blocked_by)),
                      ",".join(map(str, w.root_blockers)),
                      f"{_t(w.first_seen)} – {w.last_seen.astimezone():%H:%M:%S}",
                      short(w.query, 60) or (f"query id {w.query_id}" if w.query_id else ""))
        console.print(t)
    if summary.wait_events:
        t = Table(title="top wait events (active sessions)", title_justify="left")
        for col in ("wait event", "samples", "sessions", "≈ time"):
            t.add_column(col)
        for e in summary.wait_events:
            t.add_row(f"{e.wait_event_type}:{e.wait_event or ''}", str(e.samples),
                      str(e.sessions), human_s(e.approx_s))
        console.print(t)

