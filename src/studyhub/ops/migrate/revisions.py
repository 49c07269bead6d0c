"""Which migrations exist and in which order: Alembic's configuration over the files in
``db/migrations/versions`` (plus any extra directories of drafts), the chain from base to
head, and what a downgrade to a target would undo. (Each migration's SQL, rendered offline,
is ``statements.render_migrations``.)

Nothing here connects to a database.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alembic.config import Config
from alembic.script import ScriptDirectory

from studyhub.errors import StudyhubError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
DEFAULT_LOCK_TIMEOUT = "5s"

# Extra directories of migration files on top of the chain (a draft being tried, or the
# example migrations of the tests); empty for normal use.
ExtraVersions = Sequence[Path | str]


class MigrationError(StudyhubError):
    pass


@dataclass
class RevisionInfo:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool
    path: str


def alembic_config(extra_versions: ExtraVersions = (), **attributes: object) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    locations = [str(VERSIONS_DIR), *(str(Path(p)) for p in extra_versions)]
    cfg.set_main_option("version_locations", os.pathsep.join(locations))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "40")
    cfg.attributes.update(attributes)
    return cfg


def script_directory(extra_versions: ExtraVersions = ()) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(extra_versions))


def heads(extra_versions: ExtraVersions = ()) -> list[str]:
    return list(script_directory(extra_versions).get_heads())


def history(extra_versions: ExtraVersions = ()) -> list[RevisionInfo]:
    script = script_directory(extra_versions)
    head_set = set(script.get_heads())
    out = []
    for rev in script.walk_revisions():
        down = rev.down_revision
        out.append(
            RevisionInfo(
                revision=rev.revision,
                down_revision=down if isinstance(down, str) or down is None else ",".join(down),
                message=(rev.doc or "").strip(),
                is_head=rev.revision in head_set,
                path=display_path(rev.path),
            )
        )
    return out


def display_path(path: str | None) -> str:
    """A migration file's path as shown to people: relative to the repository when inside it."""
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(MIGRATIONS_DIR.parent.parent.parent.parent))
    except ValueError:  # an extra versions directory outside the source tree
        return str(path)


def sequence_number(path: str | Path) -> int | None:
    """The ``NNNN_`` prefix of a migration file's name (files sort in chain order by it)."""
    m = re.fullmatch(r"(\d{4,})_.*\.py", Path(path).name)
    return int(m.group(1)) if m else None


def next_revision_id() -> str:
    """Revisions are numbered 0001, 0002 ... and their files ``NNNN_<slug>.py``, so files sort
    in the order they apply. The older revisions whose ids are not numbers (m01, d01, …) carry
    the sequence number in their file name only; a new revision follows the highest of both."""
    numbers = [int(r.revision) for r in history() if r.revision.isdigit()]
    numbers += [n for p in VERSIONS_DIR.glob("*.py") if (n := sequence_number(p)) is not None]
    return f"{max(numbers, default=0) + 1:04d}"


def downgrade_plan(current_revisions: list[str], to: str) -> list[RevisionInfo]:
    """The revisions a downgrade from ``current_revisions`` to ``to`` would undo, newest first.
    ``to`` is a revision (prefix allowed), ``-N`` or ``base``."""
    if not current_revisions:
        return []
    if len(current_revisions) > 1:
        raise MigrationError("the database has several heads; downgrade one branch with --to REV")
    by_rev = {r.revision: r for r in history()}
    chain: list[RevisionInfo] = []
    rev: str | None = current_revisions[0]
    while rev is not None:
        info = by_rev.get(rev)
        if info is None:
            raise MigrationError(f"the database is at {rev}, which no migration file defines")
        chain.append(info)
        rev = info.down_revision
    if to == "base":
        return chain
    if to.startswith("-"):
        try:
            steps = int(to[1:])
        except ValueError:
            raise MigrationError(f"invalid relative revision {to!r} (use e.g. -1)") from None
        if steps < 1 or steps > len(chain):
            raise MigrationError(f"cannot go {to}: only {len(chain)} migration(s) applied")
        return chain[:steps]
    for i, info in enumerate(chain):
        if info.revision.startswith(to):
            return chain[:i]
    raise MigrationError(f"revision {to!r} is not below the database's current revision")
