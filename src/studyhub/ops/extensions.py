"""Is an extension usable in this database? If not, the exact statement that enables it."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from studyhub.errors import StudyhubError
from studyhub.ops.queries import load

NEEDS_PRELOAD = {"pg_stat_statements"}


class ExtensionMissing(StudyhubError):
    """An extension the command needs is not installed (or not preloaded)."""


@dataclass
class ExtensionStatus:
    name: str
    installed: bool
    available: bool
    preloaded: bool

    @property
    def usable(self) -> bool:
        return self.installed and (self.preloaded or self.name not in NEEDS_PRELOAD)

    def fix(self, database: str) -> str | None:
        """What an administrator runs to make the extension usable, or None when it is."""
        if self.usable:
            return None
        steps = []
        if self.name in NEEDS_PRELOAD and not self.preloaded:
            steps.append(f"add {self.name} to shared_preload_libraries and restart the server "
                         "(on DigitalOcean it is preloaded already)")
        if not self.installed:
            if not self.available:
                steps.append(f"install the server package for {self.name} "
                             "(Debian: postgresql-15-hypopg)" if self.name == "hypopg" else
                             f"install the server package providing {self.name}")
            steps.append(f"in database {database} run: CREATE EXTENSION {self.name};")
        fix = "; then ".join(steps)
        if self.name == "pg_stat_statements":
            fix += f" (or let studyhub do it: studyhub diag statements enable -d {database})"
        return fix


def extension_status(conn: psycopg.Connection, name: str) -> ExtensionStatus:
    installed, available = conn.execute(load("get_extension_status"), {"name": name}).fetchone()
    preloaded = True
    if name == "pg_stat_statements" and installed:
        # Reading shared_preload_libraries needs pg_read_all_settings; asking the view does not.
        try:
            with conn.transaction():
                conn.execute(load("get_statement_stats_probe"))
        except psycopg.errors.ObjectNotInPrerequisiteState:
            preloaded = False
    return ExtensionStatus(name, installed, available, preloaded)


def require_extension(conn: psycopg.Connection, name: str, purpose: str) -> None:
    status = extension_status(conn, name)
    if not status.usable:
        database = conn.info.dbname
        raise ExtensionMissing(
            f"{purpose} needs the {name} extension, which is not "
            f"{'installed' if not status.installed else 'preloaded'} in database {database}: "
            f"{status.fix(database)}"
        )
