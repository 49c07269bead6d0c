"""Profiles: which database a command talks to, and how it gets the password.

Three profiles exist: ``local`` (the embedded cluster under ``$STUDYHUB_HOME``, the default),
``staging`` and ``production`` (DigitalOcean managed PostgreSQL, as in the runbook).
Values come, highest priority first, from the environment (``STUDYHUB_STAGING_HOST``,
``STUDYHUB_PRODUCTION_PASSWORD`` ...), then from ``studyhub.toml`` (``[staging]`` tables) in the
working directory or at ``$STUDYHUB_CONFIG``, then the defaults below.

Passwords are never taken from the command line. They come from the environment
(``STUDYHUB_<PROFILE>_PASSWORD``, ``..._OPS_PASSWORD``, ``..._ADMIN_PASSWORD``), from a secrets
file that must be mode 0600 (``$STUDYHUB_SECRETS_FILE``, default
``~/.config/studyhub/secrets.toml``), or from libpq's own ``~/.pgpass``.

``Profile`` and ``Endpoint`` (the data, and the rule for changes) are defined in
``studyhub.profile_model`` and imported from here; the local profile is read from the embedded
cluster's state (``studyhub.local.local_profile``), which sits below this module.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from studyhub.errors import ConfigError
from studyhub.local import local_profile
from studyhub.profile_model import ROLES, Endpoint, Profile, Role

__all__ = [
    "ALL_SSLMODES", "PROFILE_NAMES", "ROLES", "SAFE_SSLMODES", "Endpoint", "Profile", "Role",
    "Settings", "list_profiles", "load_settings", "read_secrets_file", "resolve_profile",
    "secrets_file",
]

PROFILE_NAMES = ("local", "staging", "production")
SAFE_SSLMODES = ("require", "verify-ca", "verify-full")
ALL_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class RemoteProfileSettings(BaseModel):
    """A managed cluster (DigitalOcean). Defaults follow the runbook."""

    host: str | None = None
    port: int = 25060
    database: str
    user: str = "studyhub_app"
    ops_user: str = "studyhub_ops"
    admin_user: str = "doadmin"
    sslmode: str = "require"
    sslrootcert: str | None = None
    password: SecretStr | None = None
    ops_password: SecretStr | None = None
    admin_password: SecretStr | None = None
    # DigitalOcean's connection pooler listens on its own port; never used for migrations/dumps.
    pooler_port: int | None = 25061
    pooler_database: str | None = None
    replica_host: str | None = None
    replica_port: int | None = None
    read_only: bool = False
    protected: bool = False
    do_cluster_id: str | None = None


class StagingSettings(RemoteProfileSettings):
    database: str = "studyhub_staging"


class ProductionSettings(RemoteProfileSettings):
    database: str = "studyhub_prod"
    protected: bool = True  # destructive commands need --profile production on the command line


def _config_file() -> Path:
    raw = os.environ.get("STUDYHUB_CONFIG")
    return Path(raw) if raw else Path.cwd() / "studyhub.toml"


class Settings(BaseSettings):
    """All configuration, read once per command."""

    model_config = SettingsConfigDict(
        env_prefix="STUDYHUB_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    profile: str = "local"
    staging: StagingSettings = StagingSettings()
    production: ProductionSettings = ProductionSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_config_file())
        return (init_settings, env_settings, toml)


def secrets_file() -> Path:
    raw = os.environ.get("STUDYHUB_SECRETS_FILE")
    return Path(raw) if raw else Path.home() / ".config" / "studyhub" / "secrets.toml"


def read_secrets_file(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Read the 0600 secrets file; refuse one that others can read. Missing file → empty."""
    path = path or secrets_file()
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"secrets file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:  # message names the line, not the content
        raise ConfigError(f"secrets file {path} is not valid TOML: line {exc.lineno}") from None
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _remote_profile(name: str, cfg: RemoteProfileSettings, explicit: bool) -> Profile:
    if cfg.sslmode not in ALL_SSLMODES:
        raise ConfigError(f"profile {name}: unknown sslmode {cfg.sslmode!r}")
    if cfg.sslmode not in SAFE_SSLMODES:
        raise ConfigError(
            f"profile {name}: sslmode {cfg.sslmode!r} is weaker than 'require'; non-local "
            f"profiles must use {', '.join(SAFE_SSLMODES)}"
        )
    if not cfg.host:
        raise ConfigError(
            f"profile {name} has no host; set STUDYHUB_{name.upper()}_HOST or "
            f"[{name}] host = \"...\" in studyhub.toml"
        )
    env_prefix = f"STUDYHUB_{name.upper()}_"
    file_secrets = read_secrets_file().get(name, {})
    passwords: dict[str, SecretStr] = {}
    sources: dict[str, str] = {}
    for role, attr in (("app", "password"), ("ops", "ops_password"), ("admin", "admin_password")):
        value: SecretStr | None = getattr(cfg, attr)
        if value is not None:
            passwords[role] = value
            env_name = env_prefix + attr.upper()
            sources[role] = f"env {env_name}" if env_name in os.environ else "studyhub.toml"
        elif attr in file_secrets:
            passwords[role] = SecretStr(str(file_secrets[attr]))
            sources[role] = f"secrets file {secrets_file()}"
    return Profile(
        name=name,
        kind="remote",
        host=cfg.host,
        port=cfg.port,
        database=cfg.database,
        sslmode=cfg.sslmode,
        users={"app": cfg.user, "ops": cfg.ops_user, "admin": cfg.admin_user},
        passwords=passwords,
        password_sources=sources,
        sslrootcert=cfg.sslrootcert,
        pooler_port=cfg.pooler_port,
        pooler_database=cfg.pooler_database,
        replica_host=cfg.replica_host,
        replica_port=cfg.replica_port,
        read_only=cfg.read_only,
        protected=cfg.protected,
        explicit=explicit,
        do_cluster_id=cfg.do_cluster_id,
    )


def load_settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        # Field names and messages only: pydantic's own text echoes input values (secrets).
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def resolve_profile(name: str | None = None, *, settings: Settings | None = None) -> Profile:
    """Resolve a profile by name (``None`` → ``$STUDYHUB_PROFILE`` or ``local``).

    ``explicit`` is true only when the caller passed the name (from ``--profile``).
    """
    settings = settings or load_settings()
    explicit = name is not None
    chosen = name or settings.profile
    if chosen not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {chosen!r}; choose one of {', '.join(PROFILE_NAMES)}")
    if chosen == "local":
        return local_profile(explicit=explicit)
    return _remote_profile(chosen, getattr(settings, chosen), explicit)


def list_profiles() -> list[dict[str, Any]]:
    """Every profile as shown by ``studyhub profiles`` (secrets redacted, errors as text)."""
    settings = load_settings()
    rows = []
    for name in PROFILE_NAMES:
        try:
            info = resolve_profile(name, settings=settings).describe()
            info["error"] = None
        except ConfigError as exc:
            info = {"name": name, "error": str(exc)}
        info["default"] = name == settings.profile
        rows.append(info)
    return rows
