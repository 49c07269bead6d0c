"""``studyhub cluster``: point-in-time forks, backups, replicas, resize and pools — the same
commands on DigitalOcean (through its API) and on the local cluster (PostgreSQL's machinery).

Changing commands show their plan first. ``--dry-run`` stops there and sends nothing (on
DigitalOcean not even a read: the plan lists the exact requests, with <…> for values that would be
read first). Without ``--yes`` they ask on a terminal and refuse otherwise. ``--json`` prints
``{"plan": …, "result": …}`` (``result`` is null for a dry run).

One module on purpose (~505 lines): one command group whose changing commands all go through
``_change`` (plan → show → dry run → confirm → apply) and share its renderers.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Callable

import typer
from rich.table import Table
from rich.text import Text

from studyhub.cli.common import (
    DryRunOpt,
    JsonOpt,
    ProfileOpt,
    YesOpt,
    confirm_destructive,
    console,
    err_console,
    print_json,
    profile_from,
)
from studyhub.humanize import human_bytes
from studyhub.ops import cluster as ops
from studyhub.ops.cluster import iso

app = typer.Typer(
    help="Cluster operations, alike on DigitalOcean and the local cluster: info, backups, "
         "point-in-time forks, replicas, resize, connection pools.",
    no_args_is_help=True,
)
forks_app = typer.Typer(help="Point-in-time forks: list, stop, start, promote, remove.",
                        no_args_is_help=True)
replica_app = typer.Typer(help="Read replicas: list, add, remove.", no_args_is_help=True)
pool_app = typer.Typer(help="Connection pools (PgBouncer): list, add, remove.",
                       no_args_is_help=True)
app.add_typer(forks_app, name="forks")
app.add_typer(replica_app, name="replica")
app.add_typer(pool_app, name="pool")

TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Give up waiting after this many "
                                                              "seconds (the operation goes on).")]
PollOpt = Annotated[float, typer.Option("--poll-interval",
                                        help="Seconds between status checks on DigitalOcean.")]


# ------------------------------------------------------------------------ rendering
def render_plan(plan: ops.Plan, *, dry_run: bool) -> None:
    where = "local cluster" if plan.provider == "local" else f"DigitalOcean cluster {plan.cluster}"
    console.print(Text.assemble((plan.action, "bold"), f" on {where}:"))
    for line in plan.summary:
        console.print(f"  • {line}")
    for line in plan.warnings:
        console.print(Text(f"  ! {line}", style="yellow"))
    if plan.requests:
        console.print("  API requests:" if not dry_run else "  API requests it would send:")
        for r in plan.requests:
            body = f" {json.dumps(r.body, separators=(',', ':'))}" if r.body is not None else ""
            console.print(f"    {r.method} {r.path}{body}", soft_wrap=True)
    if dry_run:
        console.print("dry run: nothing was sent or changed"
                      if plan.provider != "local" else "dry run: nothing was changed")


def _change(
    profile: str | None,
    plan_fn: Callable[[Any, bool], ops.Plan],
    *,
    dry_run: bool,
    yes: bool,
    json_: bool,
    render: Callable[[Any], None],
    confirm: bool | Callable[[ops.Plan], bool] = True,
    timeout_s: float = 3600,
    poll_interval_s: float = 10,
) -> None:
    """Plan → show → (dry run: stop) → confirm → run with a progress display
    (``ops.apply_plan``, which also writes the audit line)."""
    prof = profile_from(profile)
    backend = ops.backend_for(prof)
    plan = plan_fn(backend, dry_run)
    if json_:
        if dry_run:
            print_json({"plan": plan, "result": None})
            return
    else:
        render_plan(plan, dry_run=dry_run)
        if dry_run:
            return
    if confirm(plan) if callable(confirm) else confirm:
        confirm_destructive(prof, f"cluster {plan.action}", yes=yes)
    if backend.provider == "local":  # a local fork checks its own recovery at least every 0.2 s
        poll_interval_s = min(poll_interval_s, 0.2)
    # a spinner's text is parsed as markup unless it is a Text
    with err_console.status(Text(f"{plan.action}…")) as spinner:
        result = ops.apply_plan(backend, plan, progress=lambda msg: spinner.update(Text(msg)),
                                timeout_s=timeout_s, poll_interval_s=poll_interval_s)
    if json_:
        print_json({"plan": plan, "result": result})
    else:
        render(result)


def _table(title: str, *cols: str) -> Table:
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c)
    return t


def render_window(window: ops.RecoveryWindow | None) -> str:
    if window is None:
        return "-"
    return window.describe()


def render_forks(forks: list[ops.Fork]) -> None:
    if not forks:
        console.print("no forks")
        return
    t = _table("forks", "name", "status", "as of", "where", "connect (no password)")
    for f in forks:
        where = f"{f.host}:{f.port}" if f.host else "-"
        t.add_row(f.name, f.status, iso(f.target_time), where, f.url or "-")
    console.print(t)


def render_verification(v: ops.Verification | None) -> None:
    if v is None:
        return
    if v.error:
        console.print(Text(f"verification skipped: {v.error}", style="yellow"))
        return
    t = _table(f"verification · database {v.database}", "table", "rows", "newest", "column")
    for c in v.tables:
        t.add_row(c.table, f"{c.rows:,}", iso(c.latest_at, "milliseconds"), c.latest_column)
    console.print(t)
    if v.missing_tables:
        console.print(f"tables not in this database: {', '.join(v.missing_tables)}")


def render_fork_erasures(e: ops.ForkErasures | None) -> None:
    if e is None:
        return
    if e.status == "skipped":
        console.print(Text("  erasure ledger: NOT re-applied (--no-reapply-erasures)",
                           style="bold red"))
    elif e.status == "no-ledger":
        console.print("  erasure ledger: no erasures recorded")
    else:
        console.print(f"  erasure ledger: {e.ledger_entries} erased people, {e.reapplied} of them "
                      f"were in the fork and were erased again ({e.rows_deleted:,} rows), "
                      f"{e.already_absent} already absent; verified ({e.duration_s:.2f} s)")
    if e.sources:
        console.print("    sources: " + ", ".join(f"{k}: {v}" for k, v in e.sources.items()))


# ------------------------------------------------------------------------- reads
@app.command()
def info(profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    """Size, version, nodes, replicas with their lag, pools, maintenance window, backups, forks."""
    prof = profile_from(profile)
    result = ops.backend_for(prof).info()
    if json_:
        print_json(result)
        return
    head = f"{result.provider} cluster {result.name}" + (f" ({result.id})" if result.id else "")
    console.print(Text.assemble((head, "bold"),
                                f": {result.status}, PostgreSQL {result.version or '-'}"))
    if result.size:
        console.print(f"  size: {result.size}"
                      + (f", {result.num_nodes} node(s)" if result.provider != "local" else "")
                      + (f", {result.region}" if result.region else ""))
    if result.maintenance_window:
        pending = " (maintenance pending)" if result.maintenance_pending else ""
        console.print(f"  maintenance window: {result.maintenance_window}{pending}")
    t = _table("nodes", "role", "name", "host:port", "status", "detail")
    for n in result.nodes:
        t.add_row(n.role, n.name, f"{n.host}:{n.port}" if n.host else "-", n.status,
                  n.detail or "")
    console.print(t)
    if result.replicas:
        _render_replicas(result.replicas)
    if result.streaming:
        t = _table("streaming from the primary (pg_stat_replication)", "application",
                   "client", "state", "lag")
        for s in result.streaming:
            lag = human_bytes(s.lag_bytes) + (f", {s.replay_lag_s:.1f} s"
                                              if s.replay_lag_s is not None else "")
            t.add_row(s.application_name, s.client_addr or "-", s.state, lag)
        console.print(t)
    if result.pools:
        _render_pools(result.pools)
    console.print(f"  backups: {result.backups_count}, latest {iso(result.latest_backup_at)}; "
                  f"recoverable window: {render_window(result.window)}")
    if result.forks:
        render_forks(result.forks)
    for note in result.notes:
        console.print(Text(f"  ! {note}", style="yellow"))


@app.command()
def backups(profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    """The provider's backups and the recoverable window (local: base backups + WAL archive)."""
    prof = profile_from(profile)
    result = ops.backend_for(prof).backups()
    if json_:
        print_json(result)
        return
    t = _table(f"backups · {result.provider} {result.cluster}", "taken", "finished", "kind",
               "size", "label")
    for b in result.backups:
        t.add_row(iso(b.created_at), iso(b.finished_at), b.kind, human_bytes(b.size_bytes),
                  b.label or "")
    console.print(t)
    if result.schedule:
        console.print(f"schedule: {result.schedule}")
    if result.in_progress:
        console.print(f"backup in progress: {result.in_progress}")
    a = result.wal_archive
    if a is not None:
        console.print(f"WAL archive {a.directory}: {a.segments} segment(s), "
                      f"{human_bytes(a.total_bytes)}, {a.first_segment or '-'} … "
                      f"{a.last_segment or '-'}; newest transaction {iso(a.last_commit_at)}")
        if a.archiver_failed_count:
            console.print(Text(f"archiving failed {a.archiver_failed_count} time(s), last "
                               f"{a.last_failed_wal} at {iso(a.last_failed_at)}", style="red"))
        if a.gaps:
            console.print(Text(f"missing WAL segments: {', '.join(a.gaps)}", style="red"))
    console.print(f"recoverable window: {render_window(result.window)}")


# ------------------------------------------------------------------- base backup
@app.command()
def basebackup(
    profile: ProfileOpt = None,
    keep: Annotated[int | None, typer.Option(
        "--keep", help="Keep this many base backups (with the new one); delete older ones and "
                       "the WAL only they needed.")] = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Take a base backup of the local primary (forks start from one). Schedule it from cron.
    With --keep it deletes older backups, which needs confirmation."""

    def render(b: ops.Backup) -> None:
        console.print(f"base backup {b.label}: {human_bytes(b.size_bytes)}, "
                      f"{iso(b.created_at)} … {iso(b.finished_at)}, in {b.path or ''}")

    _change(profile, lambda b, dry: b.basebackup_plan(keep, offline=dry), dry_run=dry_run,
            yes=yes, json_=json_, render=render,
            confirm=lambda plan: bool(plan.params["delete"]))


# -------------------------------------------------------------------------- forks
@app.command()
def fork(
    at: Annotated[str, typer.Option("--at", help="Point in time: ISO 8601 with a zone "
                                                 "(2026-05-01T14:03:00Z) or 'now'.")],
    name: Annotated[str, typer.Option("--name", help="Name of the new cluster.")],
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
    timeout: TimeoutOpt = 3600,
    poll_interval: PollOpt = 10,
    no_reapply_erasures: Annotated[bool, typer.Option(
        "--no-reapply-erasures", help="Do not erase again the people in the erasure ledger "
        "(the fork then holds everyone erased after its point in time).")] = False,
) -> None:
    """Point-in-time recovery into a NEW cluster (the source is not touched); waits until it is
    online, prints how to connect, verifies row counts and newest timestamps, and erases again
    everyone in the source's erasure ledger (GDPR art. 17: a fork must not bring them back)."""
    when = ops.parse_timestamp(at)
    reapply = not no_reapply_erasures

    def render(r: ops.ForkResult) -> None:
        f = r.fork
        console.print(Text.assemble((f"fork {f.name} is {f.status}", "green"),
                                    f" ({f.provider}, {f.host}:{f.port}) after "
                                    f"{r.duration_s:.1f} s"))
        console.print(f"  requested point in time: {iso(f.target_time or when, 'milliseconds')}")
        if r.recovered_to or r.first_excluded_at:
            included = (iso(r.recovered_to, "milliseconds") if r.recovered_to else
                        "none after the base backup (nothing committed between it and the "
                        "target)")
            console.print(f"  last transaction included: {included}; "
                          f"first left out: {iso(r.first_excluded_at, 'milliseconds')}")
        console.print(f"  connect: {f.url or '-'}", soft_wrap=True)
        render_verification(r.verification)
        render_fork_erasures(r.erasures)

    _change(profile, lambda b, dry: b.fork_plan(when, name, offline=dry,
                                                reapply_erasures=reapply),
            dry_run=dry_run, yes=yes, json_=json_, render=render, timeout_s=timeout,
            poll_interval_s=poll_interval)
    if no_reapply_erasures and not dry_run:
        err_console.print(Text(
            f"! erasure ledger NOT re-applied (--no-reapply-erasures): fork {name} may hold "
            f"people erased after {iso(when)}; before anyone uses it: studyhub privacy "
            f"reapply-erasures --fork {name}{' --profile ' + profile if profile else ''}",
            style="bold red"))


@forks_app.command("list")
def forks_list(profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    """Forks made with `cluster fork` (DigitalOcean: clusters tagged studyhub-fork)."""
    result = ops.backend_for(profile_from(profile)).forks()
    print_json(result) if json_ else render_forks(result)


@forks_app.command("remove")
def forks_remove(
    name: Annotated[str, typer.Argument(help="The fork's name.")],
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Stop and delete a fork (DigitalOcean: destroy the cluster; only studyhub's forks)."""
    _change(profile, lambda b, dry: b.fork_remove_plan(name, offline=dry), dry_run=dry_run,
            yes=yes, json_=json_, render=lambda r: console.print(f"fork {name}: {r.status}"))


@forks_app.command("promote")
def forks_promote(name: Annotated[str, typer.Argument(help="The fork's name.")],
                  profile: ProfileOpt = None, yes: YesOpt = False, dry_run: DryRunOpt = False,
                  json_: JsonOpt = False, timeout: TimeoutOpt = 600) -> None:
    """Make a fork the profile's primary (its erasure ledger re-applied first). DigitalOcean:
    the profile's endpoint switched in $STUDYHUB_HOME/profiles.d/PROFILE.toml. Local: the fork
    takes the primary's port, the old primary kept stopped and renamed, the replica re-seeded."""

    def render(r: ops.ChangeResult) -> None:
        d = r.details
        console.print(Text.assemble((f"fork {name} is now the primary", "green"),
                                    f" ({d.get('endpoint') or 'port ' + str(d.get('port'))})"))
        for key, label in (("profile_file", "profile written"), ("replaced", "old primary kept "
                           "(stopped)"), ("replica_reseeded", "replica re-seeded")):
            if d.get(key):
                console.print(f"  {label}: {d[key]}")

    _change(profile, lambda b, dry: b.fork_promote_plan(name, offline=dry), dry_run=dry_run,
            yes=yes, json_=json_, render=render, timeout_s=timeout)


@forks_app.command("stop")
def forks_stop(name: Annotated[str, typer.Argument(help="The fork's name.")],
               profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    """Stop a local fork (its data stays; `forks start` brings it back)."""
    result = ops.fork_stop(profile_from(profile), name)
    print_json(result) if json_ else render_forks([result])


@forks_app.command("start")
def forks_start(name: Annotated[str, typer.Argument(help="The fork's name.")],
                profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    """Start a stopped local fork again."""
    result = ops.fork_start(profile_from(profile), name)
    print_json(result) if json_ else render_forks([result])


# ----------------------------------------------------------------------- replicas
def _render_replicas(replicas: list[ops.Replica]) -> None:
    t = _table("replicas", "name", "status", "host:port", "size", "region", "lag")
    for r in replicas:
        lag = human_bytes(r.lag_bytes) if r.lag_bytes is not None else "-"
        if r.replay_lag_s is not None:
            lag += f", {r.replay_lag_s:.1f} s"
        t.add_row(r.name, r.status, f"{r.host}:{r.port}" if r.host else "-", r.size or "-",
                  r.region or "-", lag)
    console.print(t)


@replica_app.command("list")
def replica_list(profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    """Read replicas with status and (local) replay lag."""
    result = ops.backend_for(profile_from(profile)).replicas()
    if json_:
        print_json(result)
    elif result:
        _render_replicas(result)
    else:
        console.print("no replicas")


@replica_app.command("add")
def replica_add(
    name: Annotated[str | None, typer.Option("--name", help="Replica name (DigitalOcean; "
                                                            "local: 'replica').")] = None,
    size: Annotated[str | None, typer.Option("--size", help="Node size slug (DigitalOcean; "
                                                            "default: the cluster's).")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Region (DigitalOcean; "
                                                                "default: the cluster's).")] = None,
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
    timeout: TimeoutOpt = 3600,
    poll_interval: PollOpt = 10,
) -> None:
    """Add a read replica and wait until it is online (local: a streaming replica)."""
    _change(profile, lambda b, dry: b.replica_add_plan(name, size, region, offline=dry),
            dry_run=dry_run, yes=yes, json_=json_, render=lambda r: _render_replicas([r]),
            timeout_s=timeout, poll_interval_s=poll_interval)


@replica_app.command("remove")
def replica_remove(
    name: Annotated[str, typer.Argument(help="The replica's name.")],
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Remove a read replica (its readers must fall back to the primary)."""
    _change(profile, lambda b, dry: b.replica_remove_plan(name, offline=dry), dry_run=dry_run,
            yes=yes, json_=json_, render=lambda r: console.print(f"replica {name}: {r.status}"))


# ------------------------------------------------------------------------ resize
@app.command()
def resize(
    size: Annotated[str, typer.Option("--size", help="New node size slug, e.g. db-s-2vcpu-4gb.")],
    nodes: Annotated[int | None, typer.Option("--nodes", help="Number of nodes (1-3; default: "
                                                              "unchanged).")] = None,
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
    timeout: TimeoutOpt = 3600,
    poll_interval: PollOpt = 10,
) -> None:
    """Resize a DigitalOcean cluster (shows the size change and the brief downtime; needs
    confirmation) and wait until it is online again. Not applicable to the local cluster."""

    def render(r: ops.ChangeResult) -> None:
        d = r.details
        console.print(f"resized {d['from_size']} → {d['to_size']} ({d['from_nodes']} → "
                      f"{d['to_nodes']} node(s)): {r.status} after {r.duration_s:.1f} s")

    _change(profile, lambda b, dry: b.resize_plan(size, nodes, offline=dry), dry_run=dry_run,
            yes=yes, json_=json_, render=render, timeout_s=timeout, poll_interval_s=poll_interval)


# -------------------------------------------------------------------------- pools
def _render_pools(pools: list[ops.Pool]) -> None:
    t = _table("connection pools", "name", "database", "user", "mode", "size", "host:port")
    for p in pools:
        t.add_row(p.name, p.database, p.user or "(client's)", p.mode, str(p.size),
                  f"{p.host}:{p.port}" if p.host else "-")
    console.print(t)


@pool_app.command("list")
def pool_list(profile: ProfileOpt = None, json_: JsonOpt = False) -> None:
    r"""Connection pools (local: PgBouncer \[databases] entries)."""  # \[: literal in --help
    result = ops.backend_for(profile_from(profile)).pools()
    if json_:
        print_json(result)
    elif result:
        _render_pools(result)
    else:
        console.print("no connection pools")


@pool_app.command("add")
def pool_add(
    name: Annotated[str, typer.Option("--name", help="Pool name (clients use it as dbname).")],
    database: Annotated[str | None, typer.Option("--database", "-d", help="Database (default: "
                                                 "the profile's).")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Server-side user (default: each "
                                             "client's own).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="transaction, session or statement.")] =
    "transaction",
    size: Annotated[int, typer.Option("--size", help="Server connections.")] = 10,
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Add a connection pool on the pooler port."""
    _change(profile, lambda b, dry: b.pool_add_plan(name, database, user, mode, size,
                                                    offline=dry),
            dry_run=dry_run, yes=yes, json_=json_, render=lambda p: _render_pools([p]))


@pool_app.command("remove")
def pool_remove(
    name: Annotated[str, typer.Argument(help="The pool's name.")],
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Remove a connection pool (clients connected through it are cut off)."""
    _change(profile, lambda b, dry: b.pool_remove_plan(name, offline=dry), dry_run=dry_run,
            yes=yes, json_=json_, render=lambda r: console.print(f"pool {name}: {r.status}"))
