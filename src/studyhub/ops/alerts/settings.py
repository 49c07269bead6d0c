"""``[agent.alerts]`` in studyhub.toml: how often a lasting problem is repeated, when a check
counts as flapping, and where alerts go (Slack-compatible webhooks, e-mail over SMTP).

Only public values and file paths live in studyhub.toml. A webhook URL (a Slack hook's URL *is*
its credential) comes from an environment variable (``url_env``) or a 0600 file (``url_file``);
the SMTP password from ``$STUDYHUB_SMTP_PASSWORD`` or a 0600 ``password_file``. A key that looks
like a secret (``password``, ``token``, ``url`` …) is refused with one line.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from studyhub.errors import ConfigError
from studyhub.serving import is_loopback

__all__ = ["SMTP_PASSWORD_ENV", "AlertSettings", "EmailSettings", "WebhookSettings",
           "parse_alert_settings", "read_private_line"]

SMTP_PASSWORD_ENV = "STUDYHUB_SMTP_PASSWORD"
# keys that would hold a secret (as profiles._SECRET_KEY_RE), and a webhook's inline URL
_SECRET_KEY_RE = re.compile(r"(?i).*(secret|password|token|access_key|key_id|private).*")
_PATH_KEYS = ("password_file", "url_file", "url_env", "ca_file")


def _refuse_secrets(data: Any, where: str) -> Any:
    if isinstance(data, dict):
        for key in data:
            if str(key) in _PATH_KEYS:
                continue
            if _SECRET_KEY_RE.fullmatch(str(key)):
                raise ValueError(f"{key}: secrets never go in studyhub.toml; {where}")
    return data


def read_private_line(path: Path, what: str) -> str:
    """The first line of a file only its owner can read (mode 0600 or stricter); ConfigError
    (naming the file, never its content) when it is missing, empty or readable by others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} file {path} is readable by others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    lines = path.read_text().splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


class WebhookSettings(BaseModel):
    """``[[agent.alerts.webhook]]``: one Slack-compatible incoming webhook."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None  # how errors and logs name it (default: where its URL comes from)
    url_env: str | None = None  # the environment variable holding the URL
    url_file: str | None = None  # or a 0600 file whose first line is the URL
    timeout_s: float = Field(10.0, gt=0, le=120)
    attempts: int = Field(3, ge=1, le=10)  # tries per batch (5xx, 429, network errors)
    backoff_s: float = Field(1.0, ge=0, le=60)  # wait before the 2nd try; doubles after

    @model_validator(mode="before")
    @classmethod
    def _no_inline_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url" in data:
            raise ValueError("url: a webhook URL is a secret and never goes in studyhub.toml; "
                             "set url_env (an environment variable) or url_file (a 0600 file)")
        return _refuse_secrets(data, "use url_env or url_file")

    @model_validator(mode="after")
    def _one_source(self) -> "WebhookSettings":
        if (self.url_env is None) == (self.url_file is None):
            raise ValueError("set exactly one of url_env or url_file")
        return self

    @property
    def label(self) -> str:
        """A name for errors and logs: never the URL."""
        if self.name:
            return f"webhook {self.name}"
        return f"webhook ${self.url_env}" if self.url_env else f"webhook {self.url_file}"

    def url(self) -> SecretStr:
        """The URL, read now (so a rotated URL is picked up); ConfigError without the URL."""
        if self.url_env:
            value = os.environ.get(self.url_env, "").strip()
            if not value:
                raise ConfigError(f"{self.label}: environment variable {self.url_env} is not set")
        else:
            value = read_private_line(Path(self.url_file or ""), "webhook URL")
        if not value.startswith(("https://", "http://")):
            raise ConfigError(f"{self.label}: the URL must start with https:// (or http://)")
        return SecretStr(value)


class EmailSettings(BaseModel):
    """``[agent.alerts.email]``: one message per batch of alerts, over SMTP with TLS."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(587, ge=1, le=65535)
    tls: Literal["starttls", "tls", "none"] = "starttls"  # none: loopback relays only
    sender: str
    to: list[str] = Field(min_length=1)
    username: str | None = None
    password_file: str | None = None  # 0600; else $STUDYHUB_SMTP_PASSWORD (with a username)
    ca_file: str | None = None  # trust this CA (PEM) instead of the system's
    timeout_s: float = Field(30.0, gt=0, le=300)

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data, f"use password_file (0600) or ${SMTP_PASSWORD_ENV}")

    @model_validator(mode="after")
    def _safe(self) -> "EmailSettings":
        if self.tls == "none" and not is_loopback(self.host):
            raise ValueError(f"tls = \"none\" is allowed only for a relay on loopback, not "
                             f"{self.host}; use starttls or tls")
        if self.password_file and not self.username:
            raise ValueError("password_file needs a username")
        for addr in [self.sender, *self.to]:
            if "@" not in addr or any(c in addr for c in "\r\n,;<> "):
                raise ValueError("sender and to must be plain addresses (name@example.com)")
        return self

    @property
    def label(self) -> str:
        return f"email via {self.host}:{self.port}"

    def password(self) -> SecretStr | None:
        """From ``password_file`` (0600) or ``$STUDYHUB_SMTP_PASSWORD``; None without a
        username (no login). ConfigError (never the password) when it is missing."""
        if not self.username:
            return None
        if self.password_file:
            return SecretStr(read_private_line(Path(self.password_file), "SMTP password"))
        value = os.environ.get(SMTP_PASSWORD_ENV)
        if not value:
            raise ConfigError(f"{self.label}: a username is set but no password: set "
                              f"{SMTP_PASSWORD_ENV} or password_file (a 0600 file)")
        return SecretStr(value)


class AlertSettings(BaseModel):
    """``[agent.alerts]``: see docs/agent-alerts.md for what the numbers mean."""

    model_config = ConfigDict(extra="forbid")

    repeat_every_s: float = Field(3600.0, gt=0)  # a lasting problem is repeated this often
    flap_window_s: float = Field(900.0, gt=0)  # changes are counted over this window …
    flap_max_changes: int = Field(4, ge=1)  # … more than this many: the key is flapping
    resolve_after: int = Field(1, ge=1)  # consecutive ok observations before "resolved"
    webhook: list[WebhookSettings] = []
    email: EmailSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data, "see docs/agent-alerts.md")

    @property
    def has_channels(self) -> bool:
        return bool(self.webhook) or self.email is not None

    def check_secrets(self) -> None:
        """Read every channel's secret once (at start): ConfigError, one line, when one is
        missing or its file is readable by others."""
        for hook in self.webhook:
            hook.url()
        if self.email is not None:
            self.email.password()
            if self.email.ca_file and not Path(self.email.ca_file).is_file():
                raise ConfigError(f"{self.email.label}: ca_file {self.email.ca_file} does "
                                  "not exist")


def parse_alert_settings(data: dict[str, Any]) -> AlertSettings:
    """``[agent.alerts]`` as a dict → AlertSettings, or ConfigError with field names and
    messages only (pydantic's own text echoes the input values)."""
    try:
        return AlertSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'agent.alerts'}: "
            f"{err['msg'].removeprefix('Value error, ')}" for err in exc.errors())
        raise ConfigError(f"invalid [agent.alerts]: {problems}") from None
