"""How many connections the StudyHub API's workers may hold on each server (``studyhub serve``
prints it, and warns when it passes the server's max_connections): workers × (pool size + one
probe connection), per server the API's topology uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from studyhub.connect import connect, first_line
from studyhub.ops.queries import load
from studyhub.profiles import Profile
from studyhub.serving import ApiSettings, Topology

log = logging.getLogger("studyhub.ops.connection_budget")


@dataclass
class ConnectionBudget:
    """The most connections the API's workers may hold on one server, against its limit."""

    server: str  # "primary", "PgBouncer" or "replica"
    connections: int  # workers × (pool size + 1 probe connection)
    max_connections: int | None = None  # None: not checked (PgBouncer, or not reachable)
    superuser_reserved: int | None = None

    @property
    def over_limit(self) -> bool:
        return (self.max_connections is not None and
                self.connections > self.max_connections - (self.superuser_reserved or 0))


def connection_budget(profile: Profile, settings: ApiSettings,
                      topology: Topology) -> list[ConnectionBudget]:
    """What ``settings.workers`` workers may open per server; PostgreSQL servers' own limits
    are looked up (``get_connection_limits.sql``) when they answer within 3 s."""
    budgets: list[tuple[ConnectionBudget, str | None]] = []
    if topology.writer == "pooler":
        budgets.append((ConnectionBudget(
            "PgBouncer", settings.workers * (settings.writer_pool_size(True) + 1)), None))
    else:
        budgets.append((ConnectionBudget(
            "primary", settings.workers * (settings.writer_pool_size(False) + 1)), "app"))
    if topology.replica:
        budgets.append((ConnectionBudget(
            "replica", settings.workers * (settings.reader_pool_size() + 1)), "replica"))
    for budget, role in budgets:
        if role is None:
            continue
        try:
            with connect(profile, role, autocommit=True, connect_timeout=3,
                         application_name="studyhub-api-budget") as conn:
                budget.max_connections, budget.superuser_reserved, _ = conn.execute(
                    load("get_connection_limits")).fetchone()
        except Exception as exc:  # noqa: BLE001 - a server that does not answer yet
            log.info("connection limit of the %s not checked: %s", budget.server,
                     first_line(exc))
    return [b for b, _ in budgets]
