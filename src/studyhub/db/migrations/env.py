"""Alembic environment for StudyHub.

The connection comes from ``config.attributes["connection"]`` (set by studyhub.ops.migrate.apply,
which always connects to the server's own port, never through the transaction pooler).
Every migration transaction starts with ``SET lock_timeout`` so a migration waiting behind a
long transaction fails fast instead of queueing every other query behind its lock.
"""

from __future__ import annotations

from alembic import context

from studyhub.db.models import Base, include_name

config = context.config
target_metadata = Base.metadata
LOCK_TIMEOUT = config.attributes.get("lock_timeout", "5s")


def _configure(**kw):
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        include_schemas=True,
        include_name=include_name,
        transaction_per_migration=True,
        **kw,
    )


def run_migrations_offline() -> None:
    _configure(url="postgresql://", literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `studyhub migrate`, which supplies a connection")
    _configure(connection=connection)  # lock_timeout is already set on this session
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
