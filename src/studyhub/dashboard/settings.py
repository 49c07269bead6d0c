"""How the dashboard runs: which profile it opens on, which protected profiles may be acted
on, where it listens and the access token (from the environment, never from argv)."""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from studyhub.dashboard.forwarded import ProxyTrust
from studyhub.errors import ConfigError
from studyhub.profiles import PROFILE_NAMES

TOKEN_ENV = "STUDYHUB_DASHBOARD_TOKEN"
TOKEN_FILE_ENV = "STUDYHUB_DASHBOARD_TOKEN_FILE"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token() -> SecretStr | None:
    """``$STUDYHUB_DASHBOARD_TOKEN`` or the first line of the 0600 file named by
    ``$STUDYHUB_DASHBOARD_TOKEN_FILE``; None when neither is set."""
    if os.environ.get(TOKEN_ENV):
        value, source = os.environ[TOKEN_ENV].strip(), f"env {TOKEN_ENV}"
    elif os.environ.get(TOKEN_FILE_ENV):
        path = Path(os.environ[TOKEN_FILE_ENV])
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(f"{TOKEN_FILE_ENV} names {path}, which does not exist") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"dashboard token file {path} is readable by others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
        lines = path.read_text().splitlines()
        value, source = (lines[0].strip() if lines else ""), f"file {path}"
    else:
        return None
    if len(value) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the dashboard token from {source} is shorter than "
                          f"{MIN_TOKEN_CHARS} characters")
    return SecretStr(value)


@dataclass(frozen=True)
class DashboardSettings:
    """``explicit_profiles``: profiles named on the command line (``--profile``,
    ``--allow-actions``) — the only protected profiles (production) whose actions are enabled,
    as on the command line where production must be named explicitly."""

    default_profile: str = "local"
    explicit_profiles: frozenset[str] = frozenset()
    database: str | None = None  # another database of each profile's server (default: its own)
    host: str = "127.0.0.1"
    token: SecretStr | None = field(default=None, repr=False)
    capture_every_s: float = 300.0
    statement_timeout_ms: int = 15_000
    connect_timeout_s: int = 5
    max_sessions: int = 1000
    # Reverse proxies in front of the dashboard (addresses or networks) and the header they set
    # (X-Forwarded-For or Forwarded): only then is a client address read from that header, and
    # failed logins also counted per address (see studyhub.dashboard.forwarded).
    trusted_proxies: tuple[str, ...] = ()
    forwarded_header: str = "X-Forwarded-For"

    def __post_init__(self) -> None:
        self.proxy_trust()  # a bad address or header name: ConfigError now
        for name in {self.default_profile, *self.explicit_profiles}:
            if name not in PROFILE_NAMES:
                raise ConfigError(f"unknown profile {name!r}; choose one of "
                                  f"{', '.join(PROFILE_NAMES)}")
        if not is_loopback(self.host) and self.token is None:
            raise ConfigError(
                f"refusing to listen on {self.host} without an access token: set {TOKEN_ENV} "
                f"(or {TOKEN_FILE_ENV}, a 0600 file) to at least {MIN_TOKEN_CHARS} random "
                "characters, or listen on 127.0.0.1")

    def proxy_trust(self) -> ProxyTrust:
        return ProxyTrust.configure(self.trusted_proxies, self.forwarded_header)
