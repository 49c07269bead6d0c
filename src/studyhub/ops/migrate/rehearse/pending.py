"""Which migrations a database has not applied yet (the rehearsal's "what would run")."""

from __future__ import annotations

from studyhub.connect import first_line
from studyhub.ops.migrate.apply import current
from studyhub.ops.migrate.revisions import ExtraVersions, MigrationError, script_directory
from studyhub.profiles import Profile


def pending_between(current_revisions: list[str], to: str = "head", *,
                    extra_versions: ExtraVersions = ()) -> list[str]:
    """The revisions an upgrade from ``current_revisions`` to ``to`` applies, oldest first."""
    if len(current_revisions) > 1:
        raise MigrationError("the database has several heads; rehearse one branch with --to")
    script = script_directory(extra_versions)
    lower = current_revisions[0] if current_revisions else "base"
    upper = "heads" if to in ("head", "heads") else to
    try:
        revs = list(script.iterate_revisions(upper, lower))
    except Exception as exc:
        raise MigrationError(f"cannot go from {lower} to {to}: {first_line(exc)}") from None
    return [r.revision for r in reversed(revs)]


def pending_revisions(profile: Profile, to: str = "head", *, database: str | None = None,
                      extra_versions: ExtraVersions = ()) -> list[str]:
    """``pending_between`` for the database's own revision (read as the app role)."""
    return pending_between(current(profile, database), to, extra_versions=extra_versions)
