"""``cluster forks promote``'s use of the profile files the commands own
(``studyhub.profile_files``: ``$STUDYHUB_HOME/profiles.d/<profile>.toml``, merged over
studyhub.toml, written atomically with its sha256 recorded; a file someone else edited is
refused with the diff): the diff a promotion would make, for its plan, and the write.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from studyhub.errors import ConfigError, RefusedError
from studyhub.profile_files import (
    edited_by_someone_else,
    profile_file,
    read_profile_file,
    render_profile_file,
)
from studyhub.profile_files import update_profile_file as _update
from studyhub.profiles import Profile


def recorded_values(profile: str) -> dict[str, Any]:
    """What the profile's file says (``{}`` when absent or unreadable); for checks only."""
    try:
        return read_profile_file(profile)
    except ConfigError:
        return {}


def _diff(path: Path, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        str(path) if old else "/dev/null", str(path)))


def _refuse_if_edited(profile: str, changes: dict[str, Any]) -> None:
    edited = edited_by_someone_else(profile)
    if edited is not None:
        path = profile_file(profile)
        current = path.read_text()
        would = render_profile_file({**recorded_values(profile), **changes})
        raise RefusedError(
            f"{path} was changed outside studyhub (it does not match what studyhub wrote); "
            f"refusing to overwrite it (nothing was changed). Move your settings to "
            f"studyhub.toml and delete the file, then run this again. What changed:\n"
            f"{edited.rstrip()}\nThe write would make:\n{_diff(path, current, would).rstrip()}")


def plan_profile_file(profile: str, changes: dict[str, Any]) -> str:
    """The diff writing ``changes`` would make (for a plan); refuses an edited file."""
    _refuse_if_edited(profile, changes)
    path = profile_file(profile)
    old = path.read_text() if path.exists() else ""
    return _diff(path, old, render_profile_file({**read_profile_file(profile), **changes}))


def update_profile_file(profile: str, changes: dict[str, Any]) -> Path:
    """Merge ``changes`` into the profile's file (created if absent). Refuses, with the
    diff, a file someone else wrote or edited."""
    _refuse_if_edited(profile, changes)
    return _update(profile, lambda values: {**values, **changes})


# ------------------------------------------------------------------ promote a fork
def promote_changes(host: str, port: int, cluster_id: str | None) -> dict[str, Any]:
    """What ``cluster forks promote`` records: the new primary's endpoint (and its cluster id
    on DigitalOcean); no read endpoints, since the old cluster's replicas follow the old
    primary (``replicas = []`` in the profiles.d format)."""
    changes: dict[str, Any] = {"host": host, "port": port, "replicas": []}
    if cluster_id:
        changes["do_cluster_id"] = cluster_id
    return changes


def promote_warnings(profile: Profile) -> list[str]:
    warnings = ["clients connected to the old primary keep writing there until they reconnect "
                "with the new profile: stop the writers first"]
    if profile.replica_port:
        warnings.append(f"the read replica {profile.replica_host}:{profile.replica_port} follows "
                        f"the OLD primary: no longer used by this profile; add replicas to the "
                        f"new one (studyhub cluster replica add)")
    if profile.pooler_database:
        warnings.append(f"the connection pool {profile.pooler_database} is the old cluster's: "
                        f"add it on the new one (studyhub cluster pool add)")
    return warnings
