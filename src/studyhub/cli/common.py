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

import typer
from rich.console import Console

from studyhub.errors import RefusedError
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


def profile_from(name: str | None) -> Profile:
    return resolve_profile(name)


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


def refuse_unless_allowed(profile: Profile, action: str) -> None:
    """Protected profiles (production) must be named explicitly with --profile; read-only
    profiles refuse every change."""
    if profile.protected and not profile.explicit:
        raise RefusedError(
            f"refusing to {action} on {profile.name}: name it explicitly with "
            f"--profile {profile.name}"
        )
    if profile.read_only:
        raise RefusedError(f"refusing to {action}: profile {profile.name} is marked read-only")


def confirm_destructive(profile: Profile, action: str, *, yes: bool) -> None:
    """Refuse (see refuse_unless_allowed) or confirm a destructive action: without --yes we ask
    on a terminal and refuse otherwise."""
    refuse_unless_allowed(profile, action)
    if yes:
        return
    if not sys.stdin.isatty():
        raise RefusedError(f"{action} needs confirmation: re-run with --yes (nothing was changed)")
    if not typer.confirm(f"{action} on profile {profile.name}?", default=False):
        raise RefusedError("not confirmed; nothing was changed")
