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

Each profile may say where its backup sets go and how they are encrypted: a ``[<profile>.backup]``
table (``BackupConfig``, read by ``backup_config``): a target URL, the object store's endpoint
and region, the age recipients (public keys), paths of the credentials, identity and signing key
files. Only public values and paths: a key that looks like a secret is refused there.

``Profile`` and ``Endpoint`` (the data, and the rule for changes) are defined in
``studyhub.profile_model`` and imported from here; the local profile is read from the embedded
cluster's state (``studyhub.local.local_profile``), which sits below this module.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from studyhub.errors import ConfigError
from studyhub.local import local_profile
from studyhub.profile_files import read_profile_files
from studyhub.profile_model import ROLES, Endpoint, Profile, ReadEndpoint, Role

__all__ = [
    "ALL_SSLMODES", "PROFILE_NAMES", "ROLES", "SAFE_SSLMODES", "BackupConfig", "Endpoint",
    "Profile", "ReadEndpoint", "Role", "Settings", "backup_config", "list_profiles",
    "load_settings",
    "read_secrets_file", "resolve_profile", "secrets_file",
]

PROFILE_NAMES = ("local", "staging", "production")
SAFE_SSLMODES = ("require", "verify-ca", "verify-full")
ALL_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


# names of keys that would hold a secret: never in studyhub.toml (its values are not secret)
_SECRET_KEY_RE = re.compile(r"(?i).*(secret|password|token|access_key|key_id|private).*")


class BackupSettings(BaseModel):
    """``[<profile>.backup]`` in studyhub.toml: where the profile's backup sets go and who can
    read them. Public values and file paths only (see docs/backup.md)."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = None  # s3://BUCKET/PREFIX, file:///PATH or a directory
    endpoint_url: str | None = None  # e.g. https://fra1.digitaloceanspaces.com (AWS: unset)
    region: str | None = None  # e.g. fra1, eu-central-1
    addressing_style: str = "auto"  # auto | virtual | path
    recipients: list[str] = []  # age public keys (age1…): the sets are encrypted to each
    encrypt_local: bool | None = None  # local directories: default = encrypt when recipients
    credentials_file: str | None = None  # an AWS-style credentials file, mode 0600
    credentials_section: str = "default"  # its section
    identity_file: str | None = None  # the age identity (private key), 0600: restores only
    signing_key_file: str | None = None  # ed25519 private key (PEM), 0600: signs manifests
    verify_key: str | None = None  # its public key, "ed25519:BASE64": sets must be signed by it
    part_size_mib: int = 8  # multipart upload part size
    parts_in_flight: int = 4  # parts uploading (and held in memory) at once
    request_attempts: int = 8  # tries of each request (a part, a listing) before giving up

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in ("credentials_file", "credentials_section", "signing_key_file") \
                        and _SECRET_KEY_RE.fullmatch(str(key)):
                    raise ValueError(
                        f"{key}: credentials never go in studyhub.toml; use the environment, "
                        "a 0600 credentials_file, or the AWS credential chain")
        return data


class LocalProfileSettings(BaseModel):
    """The local profile is read from the embedded cluster's state; only its backup table is
    configurable."""

    backup: BackupSettings = BackupSettings()


class ReadEndpointSettings(BaseModel):
    """One read replica of a remote profile: ``[[staging.replicas]]`` in studyhub.toml, or
    written by ``cluster replica add`` into ``profiles.d/staging.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    host: str
    port: int = 25060
    region: str | None = None


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
    pooler_host: str | None = None  # when the pooler is not on the primary's host
    replica_host: str | None = None  # a single replica (named "replica"), or:
    replica_port: int | None = None
    # the read endpoints, in order of preference (None: just replica_host/replica_port; []:
    # none, e.g. after `cluster replica remove` of the last one)
    replicas: list[ReadEndpointSettings] | None = None
    read_only: bool = False
    protected: bool = False
    do_cluster_id: str | None = None
    backup: BackupSettings = BackupSettings()


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
    local: LocalProfileSettings = LocalProfileSettings()
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
        return (init_settings, env_settings, _ProfileFilesSource(settings_cls), toml)


class _ProfileFilesSource(PydanticBaseSettingsSource):
    """The files the commands own (``profiles.d/<profile>.toml``, ``studyhub.profile_files``),
    each merged over its profile's table in studyhub.toml; the environment wins over both."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_profile_files(tuple(n for n in PROFILE_NAMES if n != "local"))


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
        pooler_host=cfg.pooler_host,
        replica_host=None if cfg.replicas is not None else cfg.replica_host,
        replica_port=None if cfg.replicas is not None else cfg.replica_port,
        replicas=tuple(ReadEndpoint(r.name, r.host, r.port, r.region)
                       for r in cfg.replicas or ()),
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


# ------------------------------------------------------------------------------- backups
@dataclass(frozen=True)
class BackupConfig:
    """A profile's backup settings, resolved (``[<profile>.backup]``; paths expanded). The
    identity file may also come from ``$STUDYHUB_BACKUP_IDENTITY_FILE`` (a restore on another
    machine), the signing key from ``$STUDYHUB_BACKUP_SIGNING_KEY_FILE``."""

    profile: str = "local"
    target: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    recipients: tuple[str, ...] = ()
    encrypt_local: bool | None = None
    credentials_file: Path | None = None
    credentials_section: str = "default"
    identity_file: Path | None = None
    signing_key_file: Path | None = None
    verify_key: str | None = None
    part_size_mib: int = 8
    parts_in_flight: int = 4
    request_attempts: int = 8


def _path(raw: str | None) -> Path | None:
    return Path(raw).expanduser() if raw else None


def backup_config(name: str | None = None, *, settings: Settings | None = None) -> BackupConfig:
    """The backup settings of profile ``name`` (``None`` → ``$STUDYHUB_PROFILE`` or local).
    Needs no cluster and no database: ``backup list`` and the dashboard read it too."""
    settings = settings or load_settings()
    chosen = name or settings.profile
    if chosen not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {chosen!r}; choose one of {', '.join(PROFILE_NAMES)}")
    cfg: BackupSettings = getattr(settings, chosen).backup
    if cfg.addressing_style not in ("auto", "virtual", "path"):
        raise ConfigError(f"[{chosen}.backup] addressing_style must be auto, virtual or path")
    if not 5 <= cfg.part_size_mib <= 512 or not 1 <= cfg.parts_in_flight <= 64:
        raise ConfigError(f"[{chosen}.backup] part_size_mib must be 5-512 and parts_in_flight 1-64")
    if not 1 <= cfg.request_attempts <= 20:
        raise ConfigError(f"[{chosen}.backup] request_attempts must be 1-20")
    return BackupConfig(
        profile=chosen,
        target=cfg.target,
        endpoint_url=cfg.endpoint_url,
        region=cfg.region,
        addressing_style=cfg.addressing_style,
        recipients=tuple(cfg.recipients),
        encrypt_local=cfg.encrypt_local,
        credentials_file=_path(cfg.credentials_file),
        credentials_section=cfg.credentials_section,
        identity_file=_path(os.environ.get("STUDYHUB_BACKUP_IDENTITY_FILE") or cfg.identity_file),
        signing_key_file=_path(os.environ.get("STUDYHUB_BACKUP_SIGNING_KEY_FILE")
                               or cfg.signing_key_file),
        verify_key=cfg.verify_key,
        part_size_mib=cfg.part_size_mib,
        parts_in_flight=cfg.parts_in_flight,
        request_attempts=cfg.request_attempts,
    )
