"""What every command shares: consoles, the --profile/--json options, confirmation of
destructive work, and JSON rendering of typed results."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import psycopg
import typer
from rich.console import Console

from studyhub.errors import RefusedError
from studyhub.ops import activity
from studyhub.profiles import Profile, resolve_profile

# Text reaches these consoles verbatim: no Rich markup ("[red]", "[/]", "[link=…]") and no
# emoji codes (":warning:") are interpreted, so names, ids, SQL, paths and error messages that
# come from a person, a database, a file or a server print literally and cannot break or
# restyle the output. Style on purpose with rich.text.Text (Text.assemble, Text(..., style=)).
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False)

ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        help="local (default), staging or production; default from STUDYHUB_PROFILE.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")]
DatabaseOpt = Annotated[str | None, typer.Option(
    "--database", "-d", help="Another database of the profile's server (default: the profile's).")]
ServerWideDatabaseOpt = Annotated[str | None, typer.Option(
    "--database", "-d", help="The database to connect to (default: the profile's); the view "
                             "covers the whole server.")]


def profile_from(name: str | None) -> Profile:
    return resolve_profile(name)


def ops_connection(profile: str | None, database: str | None = None, role: str = "ops", *,
                   sees_activity: str | None = None, application_name: str = "studyhub"
                   ) -> tuple[Profile, psycopg.Connection]:
    """The named profile and its ops role's connection (``activity.monitor_connection``)."""
    prof = profile_from(profile)
    return prof, activity.monitor_connection(prof, database, role, sees_activity=sees_activity,
                                             application_name=application_name)


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    if isinstance(obj, (UUID, Path)):
        return str(obj)
    if isinstance(obj, Decimal):
        return float(obj)
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def confirm_destructive(profile: Profile, action: str, *, yes: bool) -> None:
    """Refuse (``Profile.require_changes_allowed``) or confirm a destructive action: without
    --yes we ask on a terminal and refuse otherwise."""
    profile.require_changes_allowed(action)
    if yes:
        return
    if not sys.stdin.isatty():
        raise RefusedError(f"{action} needs confirmation: re-run with --yes (nothing was changed)")
    if not typer.confirm(f"{action} on profile {profile.name}?", default=False):
        raise RefusedError("not confirmed; nothing was changed")
