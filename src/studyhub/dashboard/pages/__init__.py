"""The dashboard's pages, one module per page (``/p/{profile}/…`` and the few outside a
profile): its handlers and, at the end, ``install(app)`` with its routes. Each page gathers
typed results from ``studyhub.ops`` and hands them to its template (``render.run_page``); each
action is a POST (CSRF checked app-wide), allowed only where ``ProfileView.can_act``, preceded
by a confirmation page that shows exactly what will happen, and audited by the ops function it
calls.

Routes are added to the app itself rather than through ``include_router``: FastAPI keeps an
included router as one entry in ``app.routes``, and the app's route table is what the CSRF test
walks to find every POST route.
"""

from fastapi import FastAPI

from studyhub.dashboard.pages import (
    backups,
    indexes,
    live,
    login,
    overview,
    privacy,
    profiles,
    queries,
    space,
)

PAGES = (login, profiles, overview, queries, indexes, live, space, backups, privacy)


def install(app: FastAPI) -> None:
    """Add every page's routes to ``app``."""
    for page in PAGES:
        page.install(app)


__all__ = ["PAGES", "install"]
