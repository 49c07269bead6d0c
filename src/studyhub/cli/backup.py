"""``studyhub backup``: verified logical backups to a directory or object storage (encrypted),
restore, import of runbook dumps, retention, keys."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
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
from studyhub.errors import RefusedError
from studyhub.humanize import human_bytes, human_s
from studyhub.ops import backup, privacy
from studyhub.profiles import BackupConfig, backup_config

app = typer.Typer(help="Verified backups: create, list, verify, restore, drill, import, prune, keygen.",
                  no_args_is_help=True)

DirOpt = Annotated[Path | None, typer.Option(
    "--dir", help="Backup directory (default $STUDYHUB_BACKUP_DIR or $STUDYHUB_HOME/backups).",
    show_default=False)]
TargetOpt = Annotated[str | None, typer.Option(
    "--from", "--target", help="Where the sets are: s3://BUCKET/PREFIX, file:///PATH or a "
    r"directory (default: the profile's \[backup] target, else the backup directory).",
    show_default=False)]
IdentityOpt = Annotated[Path | None, typer.Option(
    "--identity", help="age identity file (0600) of an encrypted set (default: the profile's "
    "identity_file, $STUDYHUB_BACKUP_IDENTITY_FILE).", show_default=False)]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", help="Parallel connections (table dumps; table loads and index builds).")]
SetArg = Annotated[str, typer.Argument(help="A backup set: its name (see backup list), path or s3:// URL.")]


def _config(profile: str | None) -> BackupConfig:
    return backup_config(profile)


def _where(dir_: Path | None, target: str | None) -> str | Path | None:
    if dir_ is not None and target is not None:
        raise RefusedError("give --dir or --from/--target, not both")
    return dir_ if dir_ is not None else target


@contextmanager
def progress_bar(enabled: bool) -> Iterator[backup.ProgressFn]:
    """A Rich progress bar on stderr fed by ops progress events (quiet with --json)."""
    if not enabled:
        yield lambda _event: None
        return
    columns = (TextColumn("{task.description:<14}", markup=False), BarColumn(),
               TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(ev: backup.ProgressEvent) -> None:
            if ev.phase not in tasks:
                tasks[ev.phase] = bar.add_task(ev.phase, total=ev.total or None, detail="")
            detail = f"{ev.done}/{ev.total}" if ev.total and ev.phase != "import" else ""
            if ev.bytes:
                detail += f" {human_bytes(ev.bytes)}"
            if ev.message:
                detail += f" {ev.message[:40]}"
            bar.update(tasks[ev.phase], completed=ev.done, total=ev.total or None, detail=detail)

        yield update


@app.command()
def create(
    profile: ProfileOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for the set (default: the backup directory).")] = None,
    to: Annotated[str | None, typer.Option("--to", "--target", help=r"Where the set goes: s3://BUCKET/PREFIX, file:///PATH or a directory (default: the profile's \[backup] target, else the backup directory).", show_default=False)] = None,
    encrypt: Annotated[bool | None, typer.Option("--encrypt/--no-encrypt", help="Encrypt with age to the profile's recipients (default: always for object storage; for a directory when recipients are configured). --no-encrypt stores the data in clear.", show_default=False)] = None,
    jobs: JobsOpt = backup.DEFAULT_JOBS,
    compress: Annotated[str, typer.Option("--compress", help="zstd[:1-19], gzip[:1-9] or none.")] = str(backup.DEFAULT_COMPRESSION),
    format_: Annotated[str, typer.Option("--format", metavar="[native|sql]", help="native: the schema and every table's rows as binary COPY, restored by studyhub (fastest). sql: one plain SQL dump by pg_dump, restorable without studyhub (age -d | zstd -d | psql).")] = "native",
    json_: JsonOpt = False,
) -> None:
    """Write one backup set from one exported snapshot: the schema by pg_dump, every table's
    rows as binary COPY (parallel, compressed and encrypted as they stream: into files, or
    into multipart uploads to object storage) — or, with --format sql, one plain SQL dump by
    pg_dump, streamed the same way — per-table row counts and checksums, a manifest with
    sha256 of every file, written last (a directory is renamed into place only once fsynced
    and verified)."""
    set_format = backup.parse_set_format(format_)
    prof = profile_from(profile)
    config = _config(prof.name)
    compression = backup.parse_compression(compress)
    if out is not None and to is not None:
        raise RefusedError("give --out or --to, not both")
    if encrypt is False:
        err_console.print(Text.assemble(
            ("WARNING", "bold red"), ": --no-encrypt: this set holds every student's personal "
            "data in clear, readable by anyone who can read where it is stored"))
    with progress_bar(not json_) as update:
        result = backup.create_backup(prof, out_dir=out, target=to, config=config,
                                      encrypt=encrypt, jobs=jobs, compression=compression,
                                      progress=update, set_format=set_format)
    if json_:
        print_json(result)
        return
    console.print(Text.assemble(("backup set complete", "green"), f" {result.path}"))
    how = (f"plain SQL, {result.compression}" if result.format == "sql"
           else f"{result.compression}, {result.jobs} jobs")
    console.print(f"  {result.tables} tables, {result.rows:,} rows, {human_bytes(result.bytes)} "
                  f"({how}) in {result.duration_s:.1f} s")
    if result.encrypted_for:
        console.print("  encrypted (age) for " + ", ".join(result.encrypted_for)
                      + (f"; manifest signed by {result.signed_by}" if result.signed_by else ""))
    else:
        console.print(Text.assemble("  ", ("not encrypted", "bold yellow"),
                                    (f"; manifest signed by {result.signed_by}"
                                     if result.signed_by else "")))
    console.print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in result.durations_s.items()))


@app.command("list")
def list_(dir_: DirOpt = None, target: TargetOpt = None, profile: ProfileOpt = None,
          json_: JsonOpt = False) -> None:
    """Complete backup sets (oldest first) and leftovers of interrupted ones, in a directory or
    in object storage."""
    where = backup.open_target(_where(dir_, target), _config(profile))
    sets = where.list_sets()
    if json_:
        print_json(sets)
        return
    if not sets:
        console.print(f"no backup sets in {where.url}")
        return
    table = Table(title=f"backup sets in {where.url}", title_justify="left")
    table.add_column("set", no_wrap=True)
    for col in ("status", "format", "revision", "tables", "rows", "size", "compr.", "encrypted",
                "verified"):
        table.add_column(col, justify="right" if col in ("tables", "rows", "size") else "left",
                         no_wrap=col in ("status", "verified"))
    for s in sets:
        status = Text(s.status, style="green" if s.status == "complete" else "yellow")
        verified = Text("-")
        if s.verified:
            verified = Text.assemble(
                ("ok", "green") if s.verified.get("ok") else ("FAILED", "red"),
                " (restored)" if s.verified.get("restored") else " (files)")
        encrypted = ("age" if s.encrypted_for else "no") if s.status == "complete" else ""
        table.add_row(s.name, status, s.format or "", ", ".join(s.alembic_revision or []),
                      str(s.tables or ""), f"{s.rows:,}" if s.rows is not None else "",
                      human_bytes(s.bytes), s.compression or "", encrypted, verified)
    console.print(table)
    for s in sets:
        if s.status != "complete":
            console.print(Text.assemble((s.name, "yellow"), f": {s.problem}"))
    if any(s.status not in ("complete", "in-progress") for s in sets):
        console.print(Text("incomplete entries are leftovers of interrupted backups; "
                           "`studyhub backup prune` removes them", style="yellow"))


@app.command()
def verify(
    set_: SetArg,
    restore: Annotated[bool, typer.Option("--restore", help="Also restore into a scratch database on the local cluster and compare every table.")] = False,
    dir_: DirOpt = None,
    target: TargetOpt = None,
    identity: IdentityOpt = None,
    profile: ProfileOpt = None,
    jobs: JobsOpt = backup.DEFAULT_JOBS,
    json_: JsonOpt = False,
) -> None:
    """Check a set's files against its manifest (sizes, sha256; each object read once, from a
    directory or object storage); exit 1 on any problem. The profile's verify_key, when set,
    must have signed the manifest."""
    config = _config(profile)
    source = backup.open_source(set_, _where(dir_, target), config)
    local = profile_from("local") if restore else None
    with progress_bar(not json_) as update:
        result = backup.verify_backup(source, restore=restore, local_profile=local, jobs=jobs,
                                      progress=update, config=config, identity_file=identity)
    if json_:
        print_json(result)
    elif result.ok:
        what = f"{result.files_checked} files ({human_bytes(result.bytes_checked)}) match the manifest"
        if result.restored:
            what += f"; restored and all {result.tables_checked} tables match rows and checksums"
        console.print(Text.assemble(("ok", "green"),
                                    f" {result.name}: {what} ({result.duration_s:.1f} s)"))
    else:
        console.print(Text.assemble(("FAILED", "red"), f" {result.name}:"))
        for p in result.problems:
            console.print(f"  {p}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def restore(
    set_: SetArg,
    database: Annotated[str, typer.Option("--database", "-d", help="Database to restore into (must not exist or be empty, unless --replace).")],
    profile: ProfileOpt = None,
    jobs: JobsOpt = backup.DEFAULT_JOBS,
    replace: Annotated[bool, typer.Option("--replace", help="Swap out an existing database after a verified restore (it is kept, renamed).")] = False,
    dir_: DirOpt = None,
    target: TargetOpt = None,
    identity: IdentityOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Restore a set (from a directory or object storage) into a new database: verified files
    (remote: streamed, decrypted and checked as they load, never staged whole on disk),
    schema in one transaction, parallel data loads with each table's index builds as soon as
    it is loaded, every table compared with the manifest, erasures re-applied, then renamed
    into place. A failed restore resumes where it stopped when run again."""
    prof = profile_from(profile)
    config = _config(prof.name)
    source = backup.open_source(set_, _where(dir_, target), config)
    manifest = source.manifest
    action = (f"restore {source.name} into {database}"
              + (" replacing the existing database (kept, renamed)" if replace else ""))
    prof.require_changes_allowed(action)
    (err_console if json_ else console).print(Text.assemble(
        ("would restore", "bold"),
        f" {source.location} ({len(manifest.tables)} tables, {manifest.total_rows:,} rows, "
        f"revision {', '.join(manifest.alembic_revision) or '-'}"
        + (", encrypted" if source.encrypted else "")
        + (", plain SQL" if manifest.format == "sql" else "") + f") into {prof.name}/{database}",
        (" replacing it", "bold red") if replace else ""))
    if dry_run:
        return
    confirm_destructive(prof, action, yes=yes)
    with progress_bar(not json_) as update:
        result = backup.restore_backup(source, prof, database, jobs=jobs, replace=replace,
                                       progress=update, config=config, identity_file=identity)
    if json_:
        print_json(result)
        return
    render_restore(result)


def render_restore(result: backup.RestoreResult) -> None:
    console.print(Text.assemble(
        ("restored", "green"),
        f" {result.set_name} into {result.profile}/{result.database}: {result.tables} tables, "
        f"{result.rows:,} rows, all verified in {result.duration_s:.1f} s"
        + (" (resumed)" if result.resumed else "")))
    if result.replaced:
        console.print(Text.assemble("  the previous database is kept as ",
                                    (result.replaced, "bold"),
                                    " (drop it once you are satisfied)"))
    table = Table(title="where the time went", title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for name, secs in result.phases_s.items():
        table.add_row(name, f"{secs:.1f}")
    console.print(table)
    if result.slowest_steps:
        console.print("  slowest steps: " + ", ".join(
            f"{s.name} {s.duration_s:.1f} s" for s in result.slowest_steps[:5]))
    render_erasures(result.erasures)


def render_erasures(erasures: privacy.ErasureReapply | None) -> None:
    if erasures is None:
        return
    if erasures.status == "reapplied":
        console.print(f"  erasure ledger: {erasures.entries} erasure(s) re-applied "
                      f"(sources: {', '.join(f'{k}: {v}' for k, v in erasures.sources.items())})")
    elif erasures.status == "no-ledger":
        console.print("  erasure ledger: no erasures recorded")


@app.command()
def drill(
    target: Annotated[str | None, typer.Option(
        "--target", help="Where the sets are: s3://BUCKET/PREFIX, file:///PATH or a directory "
                         "(default: the profile's configured target, else $STUDYHUB_BACKUP_DIR "
                         "or $STUDYHUB_HOME/backups).", show_default=False)] = None,
    profile: ProfileOpt = None,
    jobs: JobsOpt = backup.DEFAULT_JOBS,
    json_: JsonOpt = False,
) -> None:
    """Prove the newest backup set of the profile's database restores: restore it into a
    scratch database on the local cluster (never onto the profile), compare every table's rows
    and checksum with the manifest, time it, drop the scratch database, and record the result
    in the profile's ops.backup_drills (diag doctor's restore_drill check reads it; a read-only
    profile gets no row). Exit 1 when the drill failed."""
    prof = profile_from(profile)
    with progress_bar(not json_) as update:
        result = backup.drill_backup(prof, target, jobs=jobs, progress=update)
    if json_:
        print_json(result)
    else:
        render_drill(result)
    if not result.ok:
        raise typer.Exit(1)


def render_drill(result: backup.DrillResult) -> None:
    where = f"{result.profile}/{result.database}"
    if result.set_name is None:  # one line: nothing was restored
        console.print(Text.assemble(
            ("drill FAILED", "red"), f" {where}: {result.problems[0]} ("
            + ("recorded as a failed drill" if result.recorded else result.record_note or "")
            + ")"))
        return
    if result.ok:
        console.print(Text.assemble(
            ("drill ok", "green"),
            f" {result.set_name} ({human_s(result.set_age_s)} old, from {result.target}): "
            f"restored into {result.restored_on} in {result.duration_s:.1f} s, all "
            f"{result.tables} tables ({result.rows:,} rows) match rows and checksums; "
            "no scratch database left"))
    else:
        console.print(Text.assemble(
            ("drill FAILED", "red"),
            f" {result.set_name} ({human_s(result.set_age_s)} old, from {result.target}) after "
            f"{result.duration_s:.1f} s; no scratch database left:"))
        for p in result.problems:
            console.print(f"  {p}")
    if result.table_results:
        table = Table(title_justify="left")
        table.add_column("table")
        table.add_column("rows", justify="right")
        table.add_column("rows and checksum")
        for t in result.table_results:
            table.add_row(t.table, f"{t.rows:,}" if t.rows is not None else "-",
                          Text("match", style="green") if t.ok
                          else Text(t.problem or "differs", style="red"))
        console.print(table)
    if result.recorded:
        console.print(f"recorded in {where} ops.backup_drills")
    else:
        err_console.print(Text(result.record_note or "not recorded", style="yellow"))


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A plain SQL dump (runbook: pg_dump URL | gzip > backup.sql.gz).")],
    database: Annotated[str, typer.Option("--database", "-d", help="New database to import into.")],
    profile: ProfileOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Import a runbook-style .sql or .sql.gz dump into a new database in one transaction
    (stops at the first error), as the app role, then count every table and re-apply
    erasures. Each statement is read by PostgreSQL's parser and sent on its own; no psql:
    meta-commands (\\!) and statements that leave its transaction or database (ROLLBACK,
    ALTER ROLE, DROP DATABASE …) refuse the import; its own BEGIN/COMMIT are left out."""
    prof = profile_from(profile)
    action = f"import {file.name} into a new database {database}"
    prof.require_changes_allowed(action)
    size = human_bytes(file.stat().st_size) if file.exists() else "missing"
    (err_console if json_ else console).print(Text.assemble(
        ("would import", "bold"), f" {file} ({size}) into {prof.name}/{database}"))
    if dry_run:
        return
    confirm_destructive(prof, action, yes=yes)
    with progress_bar(not json_) as update:
        result = backup.import_plain_dump(file, prof, database, progress=update)
    if json_:
        print_json(result)
        return
    console.print(Text.assemble(("imported", "green"),
                                f" {file.name} into {prof.name}/{database}: {result.tables} "
                                f"tables, {result.rows:,} rows in {result.duration_s:.1f} s"))
    if result.skipped_statements:
        console.print("  left out: " + ", ".join(f"{n} {k}" for k, n in result.skipped_statements.items()))
    table = Table(title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in result.table_rows.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    render_erasures(result.erasures)


@app.command()
def prune(
    keep_daily: Annotated[int, typer.Option("--keep-daily", help="Newest set of each of the last N days.")] = 7,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", help="Newest set of each of the last N ISO weeks.")] = 4,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", help="Newest set of each of the last N months.")] = 6,
    abandoned_after: Annotated[float, typer.Option("--abandoned-after", help="Object storage: hours after which a set without a manifest, and an unfinished multipart upload, count as abandoned (removed, aborted).")] = backup.DEFAULT_ABANDONED_AFTER_H,
    dir_: DirOpt = None,
    target: TargetOpt = None,
    profile: ProfileOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Grandfather-father-son retention over complete sets of one target (per profile and
    database), plus leftovers of interrupted backups (in object storage: objects without a
    manifest and unfinished multipart uploads, once abandoned). Never deletes the newest good
    set of a database."""
    plan = backup.prune_plan(dir_, keep_daily, keep_weekly, keep_monthly, target=target,
                             config=_config(profile), abandoned_after_h=abandoned_after)
    if json_ and (dry_run or not plan.to_delete):
        print_json(plan)
        return
    if not json_:
        table = Table(title=f"retention in {plan.backup_dir}", title_justify="left")
        for col in ("set", "created (UTC)", "decision", "why"):
            table.add_column(col)
        for d in plan.decisions:
            table.add_row(d.name, (d.created_at or "")[:19],
                          Text("keep", style="green") if d.keep else Text("delete", style="red"),
                          "; ".join(d.reasons))
        console.print(table)
        console.print(f"{len(plan.to_delete)} to delete, {human_bytes(plan.freed_bytes)} freed")
    if dry_run or not plan.to_delete:
        return
    if not yes:
        if not sys.stdin.isatty() or not typer.confirm(f"delete {len(plan.to_delete)} backup(s)?"):
            raise RefusedError("prune needs confirmation: re-run with --yes (nothing was deleted)")
    deleted = backup.apply_prune(plan)
    if json_:
        print_json(plan)
    else:
        console.print(f"deleted {len(deleted)} set(s)")


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="File to write (0600; never overwritten).")],
    signing: Annotated[bool, typer.Option("--signing", help="An Ed25519 key that signs manifests (put the printed verify_key in the profile) instead of an age identity.")] = False,
    json_: JsonOpt = False,
) -> None:
    r"""Write a new age identity (the private key that restores encrypted sets; keep a copy
    offline) and print its recipient for \[<profile>.backup] recipients — or, with --signing,
    a manifest signing key and the verify_key that checks it."""
    result = backup.keygen(out, signing=signing)
    if json_:
        print_json(result)
        return
    console.print(Text.assemble(("wrote", "green"), f" {result.path} ({result.kind}, 0600, "
                                f"{result.fingerprint})"))
    console.print(f"add to [<profile>.backup] in studyhub.toml: {result.profile_line}")
    if not signing:
        console.print("keep a copy of the identity offline: without it no encrypted set can be "
                      "restored")
