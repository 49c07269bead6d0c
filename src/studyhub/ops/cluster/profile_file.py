"""The profile files commands own: ``$STUDYHUB_HOME/profiles.d/<profile>.toml``, merged over
studyhub.toml for that profile, never a person's hand-written file.

A minimal writer for ``cluster forks promote`` (issue 18's shared plan gives the profiles.d
format to helper N, whose reader/writer wins at merge): flat ``key = value`` lines under a
header, written atomically, with the sha256 of the content in ``.<profile>.sha256`` beside it.
A file whose content no longer matches the recorded hash (or that has none) was written or
edited by someone else: refused, with a diff of what is there against what would be written.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from studyhub.atomic_file import write_text_atomically
from studyhub.errors import StudyhubError
from studyhub.paths import studyhub_home
from studyhub.profiles import Profile

HEADER = "# written by studyhub; edit studyhub.toml instead"


class ProfileFileEdited(StudyhubError):
    """A profiles.d file was changed by someone else; nothing was written."""


def profiles_dir() -> Path:
    return studyhub_home() / "profiles.d"


def profile_file(profile: str) -> Path:
    return profiles_dir() / f"{profile}.toml"


def _hash_file(profile: str) -> Path:
    return profiles_dir() / f".{profile}.sha256"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string (JSON's escapes are TOML's)
    if isinstance(value, list) and not value:
        return "[]"
    raise TypeError(f"cannot write {type(value).__name__} to a profile file")


def render(values: dict[str, Any]) -> str:
    return HEADER + "\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in sorted(values.items()))


def _diff(path: Path, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        str(path) if old else "/dev/null", str(path)))


def _prepare(profile: str, changes: dict[str, Any]) -> tuple[Path, str, str]:
    """(path, what is there, what would be written); refuses a file someone else edited."""
    path = profile_file(profile)
    old = path.read_text() if path.exists() else ""
    recorded = _hash_file(profile).read_text().strip() if _hash_file(profile).exists() else None
    if path.exists() and recorded != _sha(old):
        current = {}
        try:
            current = tomllib.loads(old)
        except tomllib.TOMLDecodeError:
            pass
        raise ProfileFileEdited(
            f"{path} was changed outside studyhub (it does not match {_hash_file(profile).name})"
            f"; refusing to overwrite it (nothing was changed). Move your settings to "
            f"studyhub.toml and delete the file, then run this again. The write would make:\n"
            + _diff(path, old, render({**current, **changes})))
    current = tomllib.loads(old) if old else {}
    return path, old, render({**current, **changes})


def recorded_values(profile: str) -> dict[str, Any]:
    """What the profile's file says (``{}`` when absent or unreadable); for checks only."""
    try:
        return tomllib.loads(profile_file(profile).read_text())
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return {}


def plan_profile_file(profile: str, changes: dict[str, Any]) -> str:
    """The diff writing ``changes`` would make (for a plan); refuses an edited file."""
    path, old, new = _prepare(profile, changes)
    return _diff(path, old, new)


def update_profile_file(profile: str, changes: dict[str, Any]) -> Path:
    """Merge ``changes`` into the profile's file (created if absent), write it atomically and
    record its hash. Refuses, with the diff, a file someone else wrote or edited."""
    path, _old, new = _prepare(profile, changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, new, mode=0o644, overwrite=True)
    write_text_atomically(_hash_file(profile), _sha(new) + "\n", mode=0o644, overwrite=True)
    return path


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
