"""Profiles as the dashboard sees them: resolved (or why not), and whether its actions are
allowed — by the same rule the command line uses (``Profile.require_changes_allowed``):
read-only profiles never act; protected ones (production) only when named explicitly, which for
the dashboard means named when it was started (``--profile production`` or
``--allow-actions production``)."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg

from studyhub.connect import connect
from studyhub.errors import RefusedError, StudyhubError
from studyhub.profiles import PROFILE_NAMES, Profile, load_settings, resolve_profile
from studyhub.serving import DashboardSettings

APP_NAME = "studyhub dashboard"
ACTIONS = "cancel, terminate or build indexes"


@dataclass
class ProfileView:
    name: str
    profile: Profile | None
    error: str | None
    actions_refused: str | None  # None: actions allowed

    @property
    def ok(self) -> bool:
        return self.profile is not None

    @property
    def can_act(self) -> bool:
        return self.profile is not None and self.actions_refused is None


def action_refusal(profile: Profile) -> str | None:
    try:
        profile.require_changes_allowed(ACTIONS)
    except RefusedError as exc:
        text = str(exc)
        if profile.protected and not profile.explicit:
            text += (f" when starting the dashboard (studyhub dashboard --profile {profile.name}, "
                     f"or --allow-actions {profile.name})")
        return text
    return None


def view_profile(name: str, settings: DashboardSettings) -> ProfileView:
    """Resolve one profile; a profile that does not resolve is a view with its error."""
    try:
        prof = resolve_profile(name)
    except StudyhubError as exc:
        return ProfileView(name, None, str(exc), str(exc))
    prof = dataclasses.replace(prof, explicit=name in settings.explicit_profiles)
    return ProfileView(name, prof, None, action_refusal(prof))


def all_profiles(settings: DashboardSettings) -> list[ProfileView]:
    try:
        load_settings()
    except StudyhubError as exc:  # a broken studyhub.toml: every profile says so
        return [ProfileView(n, None, str(exc), str(exc)) for n in PROFILE_NAMES]
    return [view_profile(n, settings) for n in PROFILE_NAMES]


@contextmanager
def connection(view: ProfileView, settings: DashboardSettings, role: str = "ops", *,
               statement_timeout: bool = True) -> Iterator[psycopg.Connection]:
    """An autocommit connection for one page (a statement_timeout keeps a slow catalog query
    from hanging the page, or the server)."""
    assert view.profile is not None
    extra = {}
    if statement_timeout:
        extra["options"] = f"-c statement_timeout={settings.statement_timeout_ms}"
    with connect(view.profile, role, database=settings.database, autocommit=True,
                 application_name=APP_NAME,
                 connect_timeout=settings.connect_timeout_s, **extra) as conn:
        yield conn
