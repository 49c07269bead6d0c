"""The databases a restore or import works in: ``NAME_restoring``, created and marked (database
comment) by the admin role on the maintenance database, and renamed to its final name only
once verified — an existing database of that name is first renamed aside and kept
(``--replace``), never dropped."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from studyhub.connect import connect
from studyhub.errors import RefusedError
from studyhub.ops.backup.setformat import BackupError
from studyhub.ops.queries import load
from studyhub.profiles import Profile


def admin_database(profile: Profile) -> str:
    return "postgres" if profile.is_local else "defaultdb"


def admin_connection(profile: Profile) -> psycopg.Connection:
    return connect(profile, "admin", database=admin_database(profile), autocommit=True,
                   application_name="studyhub restore")


def staging_name(target: str) -> str:
    suffix = "_restoring"
    return target.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


def database_exists(admin: psycopg.Connection, name: str) -> bool:
    return bool(admin.execute(load("get_databases_like"), {"names": [name]}).fetchone())


def database_comment(admin: psycopg.Connection, name: str) -> str | None:
    row = admin.execute(load("get_database_comment"), {"name": name}).fetchone()
    return row[0] if row else None


def database_is_empty(profile: Profile, name: str) -> bool:
    with connect(profile, "admin", database=name, application_name="studyhub restore") as conn:
        return bool(conn.execute(load("get_database_is_empty")).fetchone()[0])


def set_database_comment(admin: psycopg.Connection, db: str, text: str) -> None:
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(db), sql.Literal(text)))


def drop_database(admin: psycopg.Connection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def prepare_staging(admin: psycopg.Connection, profile: Profile, database: str, marker: str,
                    encoding: str, *, replace: bool, resume_at: str | None = None) -> tuple[str, bool]:
    """The staging database of a restore into ``database``, marked ``{marker}: in progress``:
    refused when ``database`` holds data and ``replace`` was not asked for; a leftover staging
    database of ours (``studyhub restore of …``) is dropped and made again, or resumed when its
    comment says ``{marker}: {resume_at}``; one that is not ours is refused. Returns its name
    and whether it was resumed."""
    staging = staging_name(database)
    resumed = False
    if database_exists(admin, database) and not database_is_empty(profile, database) and not replace:
        raise RefusedError(
            f"database {database} exists and is not empty; restore into a new name, or "
            f"use --replace to swap it out after a verified restore (it is kept, renamed)")
    if database_exists(admin, staging):
        comment = database_comment(admin, staging) or ""
        if resume_at is not None and comment == f"{marker}: {resume_at}":
            resumed = True
        elif comment.startswith("studyhub restore of ") or database_is_empty(profile, staging):
            drop_database(admin, staging)  # our own leftover, from another set or too early
        else:
            raise RefusedError(f"database {staging} exists and is not a restore of ours; "
                               "drop or rename it first")
    if not resumed:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {}").format(
            sql.Identifier(staging), sql.Identifier(profile.users["app"]), sql.Literal(encoding)))
        set_database_comment(admin, staging, f"{marker}: in progress")
    return staging, resumed


def create_extensions(profile: Profile, database: str, extensions: list[dict[str, str]]) -> None:
    """The manifest's extensions in ``database``, created by the admin role before the
    schema is restored (the owner role may not create most of them); a schema of an
    extension's own is created first, owned by the app role."""
    with connect(profile, "admin", database=database, autocommit=True,
                 application_name="studyhub restore") as conn:
        for schema in sorted({x["schema"] for x in extensions if x["schema"] != "public"}):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(profile.users["app"])))
        for ext in extensions:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
                sql.Identifier(ext["name"]), sql.Identifier(ext["schema"])))


def swap_in(profile: Profile, staging: str, database: str) -> str | None:
    """Give the verified staging database its final name; an existing database of that name
    is kept under ``{name}_before_restore_{UTC time}`` (never dropped)."""
    aside = None
    with admin_connection(profile) as admin:
        if database_exists(admin, database):
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
            aside = database.encode()[: 63 - 30].decode(errors="ignore") + f"_before_restore_{stamp}"
            ident = sql.Identifier(database)
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident))
            try:
                admin.execute(load("do_terminate_database_sessions"), {"name": database})
                rename_when_idle(admin, database, aside)
            except BaseException:
                admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident))
                raise
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(aside)))
        try:
            rename_when_idle(admin, staging, database)
        except BaseException:
            if aside:
                admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(aside), sql.Identifier(database)))
            raise
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(database)))
    return aside


def rename_when_idle(admin: psycopg.Connection, old: str, new: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise BackupError(f"database {old} is still in use; could not rename it to {new}") from None
            admin.execute(load("do_terminate_database_sessions"), {"name": old})
            time.sleep(0.1)
