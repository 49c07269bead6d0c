"""``studyhub top``: a live, refreshing view of the database (pg_activity-like) that works over
SSH: header with TPS, cache hit, connections by state and replication lag; running, waiting and
blocking sessions; sort, filter, cancel or terminate the selected backend (with confirmation,
audited). ``--once`` prints one snapshot (``--json`` for scripts and tests).

Keys: ↑/↓ (j/k) select · s sort · i idle on/off · / filter · c cancel · t terminate ·
p pause · +/- refresh interval · q quit.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Iterator

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from studyhub.cli.common import (
    JsonOpt,
    ProfileOpt,
    console,
    print_json,
    profile_from,
)
from studyhub.cli.diag.server import lock_tree, replay_line
from studyhub.connect import connect
from studyhub.errors import StudyhubError
from studyhub.humanize import human_bytes, human_s, short
from studyhub.ops import activity, emergency, history


def snapshot_dict(snap: activity.TopSnapshot, rows: list[activity.Session]) -> dict:
    blockers = {b for s in snap.sessions for b in s.blocked_by}
    return {
        "database": snap.database,
        "tps": None if snap.tps is None else round(snap.tps, 2),
        "cache_hit_pct": None if snap.cache_hit_pct is None else round(snap.cache_hit_pct, 2),
        "connections_by_state": snap.connections_by_state,
        "max_connections": snap.max_connections,
        "replication_lag_bytes": snap.replication_lag_bytes,
        "replication_lag_s": snap.replication_lag_s,
        "sessions": [{
            "pid": s.pid, "database": s.database, "role": s.role, "application": s.application,
            "client_addr": s.client_addr, "state": s.state, "age_s": s.age_s,
            "wait_event_type": s.wait_event_type, "wait_event": s.wait_event,
            "blocked_by": s.blocked_by, "blocking": s.pid in blockers,
            "query_id": s.query_id, "query": s.query} for s in rows],
    }


def render(profile: str, snap: activity.TopSnapshot, rows: list[activity.Session], *,
           sort: str, text_filter: str | None, include_idle: bool, selected: int | None = None,
           interval: float | None = None, paused: bool = False, message: str | None = None,
           height: int | None = None, replay: str | None = None) -> Group:
    """One frame; ``replay`` (which past snapshot this is) replaces the live-only header
    numbers (TPS, cache hit, replication lag are not sampled)."""
    blockers = {b for s in snap.sessions for b in s.blocked_by}
    conns = sum(snap.connections_by_state.values())
    states = "  ".join(f"{k}: {v}" for k, v in sorted(snap.connections_by_state.items()))
    tps = "-" if snap.tps is None else f"{snap.tps:,.1f}"
    hit = "-" if snap.cache_hit_pct is None else f"{snap.cache_hit_pct:.2f}%"
    lag = "no replicas" if snap.replication_lag_bytes is None else \
        f"{human_bytes(snap.replication_lag_bytes)} / {human_s(snap.replication_lag_s)}"
    if replay:
        header = Text.assemble(
            ("studyhub top", "bold"), f" · {profile} · ", (replay, "bold"),
            ("  connections ", "dim"), f"{conns}/{snap.max_connections}")
    else:
        header = Text.assemble(
            ("studyhub top", "bold"), f" · {profile}/{snap.database} · ",
            ("TPS ", "dim"), tps, ("  cache hit ", "dim"), hit,
            ("  connections ", "dim"), f"{conns}/{snap.max_connections}",
            ("  replication lag ", "dim"), lag)
    sub = Text.assemble((f"states: {states or '-'}", "dim"),
                        f"   sort: {sort}  idle: {'shown' if include_idle else 'hidden'}"
                        + (f"  filter: {text_filter}" if text_filter else "")
                        + (f"  every {interval:g}s" if interval else "")
                        + ("  [PAUSED]" if paused else ""))
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold reverse")
    for col, kw in (("PID", {"justify": "right", "min_width": 7}),
                    ("DB", {"max_width": 14}), ("USER", {"max_width": 14}),
                    ("APP", {"max_width": 16}), ("STATE", {"max_width": 12}),
                    ("TIME", {"justify": "right", "min_width": 6}), ("WAIT", {"max_width": 18}),
                    ("BLOCKED BY", {"min_width": 7}), ("QUERY", {"ratio": 1, "min_width": 20})):
        table.add_column(col, no_wrap=True, overflow="ellipsis", **kw)
    limit = max(3, (height or 40) - 6)
    start = 0
    if selected is not None and selected >= limit:
        start = selected - limit + 1
    for i, s in enumerate(rows[start:start + limit], start):
        style = ""
        if s.pid in blockers:
            style = "bold red"
        elif s.blocked_by:
            style = "yellow"
        elif s.state.startswith("idle in transaction"):
            style = "magenta"
        if i == selected:
            style = (style + " reverse").strip()
        wait = f"{s.wait_event_type}:{s.wait_event}" if s.wait_event_type else ""
        table.add_row(str(s.pid), s.database or "", s.role or "", s.application,
                      s.state.replace("idle in transaction", "idle in xact"), human_s(s.age_s), wait, ",".join(map(str, s.blocked_by)),
                      short(s.query, 300), style=style)
    if replay:
        return Group(header, sub, table)
    footer = Text(message or "↑/↓ select  s sort  i idle  / filter  c cancel  t terminate  "
                             "p pause  +/- interval  q quit", style="dim")
    return Group(header, sub, table, footer)


@contextmanager
def raw_terminal() -> Iterator[None]:
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def read_key(timeout: float) -> str | None:
    """One key press (arrow keys as 'up'/'down'), or None after ``timeout`` seconds."""
    fd = sys.stdin.fileno()
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    if not ready:
        return None
    ch = os.read(fd, 1).decode(errors="ignore")
    if ch == "\x1b":
        more, _, _ = select.select([fd], [], [], 0.02)
        if more:
            seq = os.read(fd, 2).decode(errors="ignore")
            return {"[A": "up", "[B": "down"}.get(seq, "esc")
        return "esc"
    return ch


@dataclass
class TopState:
    sort: str = "duration"
    text_filter: str | None = None
    include_idle: bool = False
    interval: float = 2.0
    selected: int = 0
    paused: bool = False
    message: str | None = None
    pending: tuple[str, int, str] | None = None  # (action, pid, who) awaiting y/n
    typing: str | None = None  # filter being typed
    rows: list[activity.Session] = field(default_factory=list)


def top(
    profile: ProfileOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    json_: JsonOpt = False,
    interval: Annotated[float, typer.Option("--interval", "-n", min=0.2,
                                            help="Seconds between refreshes.")] = 2.0,
    sort: Annotated[str, typer.Option("--sort", help="duration | pid | state | blocking")] = "duration",
    filter_: Annotated[str | None, typer.Option(
        "--filter", help="Only sessions whose user, app, database, state or query contains this.")] = None,
    include_idle: Annotated[bool, typer.Option("--idle", help="Show idle sessions too.")] = False,
    database: Annotated[str | None, typer.Option(
        "--database", "-d", help="Database for the header's TPS and cache hit.")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", help="Replay a past moment from the agent's history (the nearest snapshot at "
                     "or before it): '2026-12-02 09:41' (local time) or ISO 8601 with an "
                     "offset.")] = None,
) -> None:
    """Live view of sessions (running, waiting, blocking) with TPS, cache hit, connections and
    replication lag; cancel or terminate the selected one. Runs as the ops role. --once (with
    --json) prints one snapshot for scripts; --at replays a past moment (sessions and blocking
    tree) from the activity history `studyhub agent` samples."""
    if sort not in activity.SORTS:
        raise StudyhubError(f"unknown sort {sort!r}; choose one of {', '.join(activity.SORTS)}")
    when = history.parse_when(at, what="--at time") if at else None
    prof = profile_from(profile)
    if when is not None:
        _replay(prof, when, database, json_=json_, sort=sort, text_filter=filter_)
        return
    with connect(prof, "ops", database=database, autocommit=True,
                 application_name="studyhub top") as conn:
        activity.require_monitor(conn, "studyhub top")
        if once or json_:
            first = activity.top_snapshot(conn, include_idle=include_idle)
            time.sleep(min(interval, 1.0))  # TPS and cache hit need two samples
            snap = activity.top_snapshot(conn, first, include_idle=include_idle)
            rows = activity.sort_sessions(snap, sort, filter_)
            if json_:
                print_json(snapshot_dict(snap, rows))
            else:
                console.print(render(prof.name, snap, rows, sort=sort, text_filter=filter_,
                                     include_idle=include_idle, height=10_000))
            return
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise StudyhubError("studyhub top needs a terminal; use --once (or --json) in scripts")
        _interactive(prof, conn, TopState(sort, filter_, include_idle, interval))


def _replay(prof, when, database: str | None, *, json_: bool, sort: str,
            text_filter: str | None) -> None:
    """``top --at``: the sessions and blocking tree of the nearest sampled moment."""
    with connect(prof, "ops", database=database, autocommit=True,
                 application_name="studyhub top") as conn:
        m = history.moment(conn, when)
        snap = m.as_top(conn.info.dbname)
    rows = activity.sort_sessions(snap, sort, text_filter)
    if json_:
        print_json({**snapshot_dict(snap, rows), "taken_at": m.taken_at, "asked_at": m.asked_at,
                    "gap_s": m.gap_s, "waiting": m.waiting, "blocked_chains": m.blocked_chains,
                    "longest_transaction_s": m.longest_transaction_s, "tree": m.tree})
        return
    console.print(render(prof.name, snap, rows, sort=sort, text_filter=text_filter,
                         include_idle=False, height=10_000, replay=replay_line(m)))
    if m.tree:
        console.print(lock_tree(f"blocking tree: {sum(1 + r.count() for r in m.tree)} sessions "
                                "involved", m.tree))
    else:
        console.print("no session was waiting for a lock")


def _interactive(prof, conn, st: TopState) -> None:
    snap = activity.top_snapshot(conn, include_idle=st.include_idle)
    with raw_terminal(), Live(console=console, screen=True, auto_refresh=False) as live:
        next_at = 0.0
        while True:
            now = time.monotonic()
            if now >= next_at and not st.paused:
                snap = activity.top_snapshot(conn, snap, include_idle=st.include_idle)
                next_at = now + st.interval
            st.rows = activity.sort_sessions(snap, st.sort, st.text_filter)
            st.selected = min(st.selected, max(0, len(st.rows) - 1))
            msg = st.message
            if st.typing is not None:
                msg = f"filter: {st.typing}_  (Enter to apply, Esc to cancel)"
            elif st.pending:
                msg = (f"{st.pending[0]} PID {st.pending[1]} ({st.pending[2]})? "
                       "press y to confirm, any other key to abort")
            live.update(render(prof.name, snap, st.rows, sort=st.sort, text_filter=st.text_filter,
                               include_idle=st.include_idle, selected=st.selected,
                               interval=st.interval, paused=st.paused, message=msg,
                               height=console.height), refresh=True)
            key = read_key(max(0.05, next_at - time.monotonic()) if not st.paused else 0.5)
            if key is None:
                continue
            if _handle_key(prof, conn, st, key):
                return
            next_at = 0.0 if key in ("i", "/", "\n", "s") else next_at


def _handle_key(prof, conn, st: TopState, key: str) -> bool:
    """Apply one key; True means quit."""
    if st.typing is not None:
        if key in ("\n", "\r"):
            st.text_filter, st.typing = (st.typing or None), None
        elif key == "esc":
            st.typing = None
        elif key in ("\x7f", "\b"):
            st.typing = st.typing[:-1]
        elif key.isprintable():
            st.typing += key
        return False
    if st.pending:
        action, pid, _ = st.pending
        st.pending = None
        if key.lower() == "y":
            try:
                prof.require_changes_allowed(f"{action} PID {pid}")
                # the row showed its database and the operator confirmed this very PID
                targets = emergency.plan_signal(conn, [pid], other_databases=True)
                outcome = emergency.signal(conn, targets, action, profile=prof.name)[0]
                st.message = f"{action} {pid}: {outcome.result}"
            except StudyhubError as exc:
                st.message = f"{action} {pid}: {exc}"
        else:
            st.message = f"{action} {pid}: not confirmed, nothing done"
        return False
    st.message = None
    if key in ("q", "Q"):
        return True
    if key in ("down", "j"):
        st.selected += 1
    elif key in ("up", "k"):
        st.selected = max(0, st.selected - 1)
    elif key == "s":
        sorts = activity.SORTS
        st.sort = sorts[(sorts.index(st.sort) + 1) % len(sorts)]
    elif key == "i":
        st.include_idle = not st.include_idle
    elif key == "/":
        st.typing = st.text_filter or ""
    elif key == "p":
        st.paused = not st.paused
    elif key == "+":
        st.interval = min(60.0, st.interval * 2)
    elif key == "-":
        st.interval = max(0.5, st.interval / 2)
    elif key in ("c", "t") and st.rows:
        row = st.rows[st.selected]
        action = "cancel" if key == "c" else "terminate"
        try:  # production must be named with --profile before anything is armed
            prof.require_changes_allowed(f"{action} PID {row.pid}")
        except StudyhubError as exc:
            st.message = str(exc)
            return False
        st.pending = (action, row.pid, f"{row.role}@{row.database} {row.application}".strip())
    return False
