"""Profile files the commands own: ``$STUDYHUB_HOME/profiles.d/<profile>.toml`` (the
directory may be moved with ``$STUDYHUB_PROFILES_DIR``).

Commands that change a cluster's shape (``cluster replica add|remove``, ``cluster pool
add|remove``, promoting a fork) record what changed here, so the app and every other command
use it without a config edit. ``studyhub.profiles`` merges each file over ``studyhub.toml``'s
table for that profile (the environment still wins over both); a person's own studyhub.toml is
never rewritten.

A file is written atomically, starts with ``HEADER``, and the sha256 of what was written is
kept in ``profiles.d/.<profile>.sha256`` (and the text itself in ``.<profile>.toml.written``,
to show what changed). A file whose content no longer matches that hash was edited by someone
else (or made by hand): ``update_profile_file`` refuses to write it and the error shows the
diff. Values are public only (hosts, ports, names): never a password.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

from studyhub.atomic_file import write_text_atomically
from studyhub.errors import ConfigError, RefusedError
from studyhub.paths import studyhub_home

HEADER = "# written by studyhub; edit studyhub.toml instead"
_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY_RE = re.compile(r"(?i).*(secret|password|token|private).*")


def profiles_dir() -> Path:
    """``$STUDYHUB_PROFILES_DIR``, or ``profiles.d`` under ``$STUDYHUB_HOME``."""
    raw = os.environ.get("STUDYHUB_PROFILES_DIR")
    return (Path(raw) if raw else studyhub_home() / "profiles.d").absolute()


def profile_file(profile: str) -> Path:
    if not _NAME_RE.fullmatch(profile):
        raise ConfigError(f"invalid profile name {profile!r}")
    return profiles_dir() / f"{profile}.toml"


def _hash_file(profile: str) -> Path:
    return profiles_dir() / f".{profile}.sha256"


def _written_copy(profile: str) -> Path:
    return profiles_dir() / f".{profile}.toml.written"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_profile_file(profile: str) -> dict[str, Any]:
    """The values of ``profiles.d/<profile>.toml`` (empty when there is none)."""
    path = profile_file(profile)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); it is written by studyhub: "
                          f"delete it and put your settings in studyhub.toml") from None


def read_profile_files(names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``{profile: values}`` for each of ``names`` that has a file."""
    found = {}
    for name in names:
        values = read_profile_file(name)
        if values:
            found[name] = values
    return found


# ------------------------------------------------------------------------------ writing
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string with ASCII escapes is a TOML basic string
    raise TypeError(f"cannot write {type(v).__name__} into a profile file")


def render_profile_file(values: dict[str, Any]) -> str:
    """The file's text: ``HEADER``, scalar keys, then arrays of tables (``[[replicas]]``)."""
    lines = [HEADER]
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    for key in sorted(values):
        v = values[key]
        if not _KEY_RE.fullmatch(key) or _SECRET_KEY_RE.fullmatch(key):
            raise ConfigError(f"refusing to write the key {key!r} into a profile file")
        if v is None:
            continue
        if isinstance(v, list) and v:
            tables.append((key, v))
        elif isinstance(v, list):
            lines.append(f"{key} = []")  # (before any table, or it would belong to it)
        else:
            lines.append(f"{key} = {_value(v)}")
    for key, rows in tables:
        for row in rows:
            lines += ["", f"[[{key}]]"]
            lines += [f"{k} = {_value(x)}" for k, x in row.items() if x is not None]
    return "\n".join(lines) + "\n"


def edited_by_someone_else(profile: str) -> str | None:
    """The diff (what studyhub last wrote → what the file holds now) when the file was changed
    or made by someone else; None when it is ours as written (or absent)."""
    path = profile_file(profile)
    try:
        current = path.read_text()
    except FileNotFoundError:
        return None
    try:
        recorded = _hash_file(profile).read_text().strip()
    except FileNotFoundError:
        recorded = None
    if recorded == _sha256(current):
        return None
    try:
        written = _written_copy(profile).read_text() if recorded else ""
    except FileNotFoundError:
        written = ""
    diff = difflib.unified_diff(written.splitlines(keepends=True),
                                current.splitlines(keepends=True),
                                fromfile=f"{path.name} as studyhub wrote it" if recorded
                                else "(no file written by studyhub)",
                                tofile=f"{path.name} now")
    return "".join(diff) or "(the content differs from what studyhub recorded)\n"


def update_profile_file(profile: str, change: Callable[[dict[str, Any]], dict[str, Any]]
                        ) -> Path:
    """Read ``profiles.d/<profile>.toml``, apply ``change`` to its values and write the result
    atomically (recording its sha256). Refuses (``RefusedError`` with the diff, nothing
    written) when someone else edited or made the file."""
    path = profile_file(profile)
    diff = edited_by_someone_else(profile)
    if diff is not None:
        raise RefusedError(
            f"{path} was edited by someone else; studyhub writes that file itself, so it was "
            f"not changed (put your settings in studyhub.toml, then delete {path} or restore "
            f"it; the change is shown below):\n{diff.rstrip()}")
    values = change(read_profile_file(profile))
    text = render_profile_file(values)
    tomllib.loads(text)  # what we write must read back
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_text_atomically(_written_copy(profile), text, mode=0o644, overwrite=True)
    write_text_atomically(path, text, mode=0o644, overwrite=True)
    write_text_atomically(_hash_file(profile), _sha256(text) + "\n", mode=0o644, overwrite=True)
    return path
