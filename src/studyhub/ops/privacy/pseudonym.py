"""Keyed pseudonyms: HMAC-SHA256 under a secret key kept outside every export and database.

A plain hash of an email or id (the runbook's ``md5(email)``) is reversed by hashing a list of
candidates; an HMAC cannot be recomputed without the key. The key comes from
``$STUDYHUB_PSEUDONYM_KEY`` or from a key file that must be mode 0600
(``$STUDYHUB_PSEUDONYM_KEY_FILE``, default ``~/.config/studyhub/pseudonym.key``; make one with
``studyhub privacy keygen``). Without a key, commands that need pseudonyms refuse to run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from studyhub.atomic_file import write_atomically
from studyhub.errors import ConfigError, RefusedError

KEY_ENV = "STUDYHUB_PSEUDONYM_KEY"
KEY_FILE_ENV = "STUDYHUB_PSEUDONYM_KEY_FILE"
MIN_KEY_CHARS = 32
PSEUDONYM_HEX_CHARS = 32  # 128 bits of the HMAC: collision-free at any realistic size


class MissingKeyError(RefusedError):
    """No pseudonym key is configured; nothing was done."""


def default_key_file() -> Path:
    return Path.home() / ".config" / "studyhub" / "pseudonym.key"


def key_file() -> Path:
    raw = os.environ.get(KEY_FILE_ENV)
    return Path(raw) if raw else default_key_file()


@dataclass(frozen=True)
class PseudonymKey:
    secret: bytes = field(repr=False)
    source: str  # where it came from (never the value)

    def pseudonym(self, domain: str, value: object) -> str:
        """Stable pseudonym of ``value`` within ``domain`` (student, card, user ...)."""
        digest = hmac.new(self.secret, f"{domain}:{value}".encode(), hashlib.sha256)
        return digest.hexdigest()[:PSEUDONYM_HEX_CHARS]


def _checked(value: str, source: str) -> PseudonymKey:
    value = value.strip()
    if len(value) < MIN_KEY_CHARS:
        raise ConfigError(f"the pseudonym key from {source} is too short (at least "
                          f"{MIN_KEY_CHARS} characters; make one with `studyhub privacy keygen`)")
    return PseudonymKey(value.encode(), source)


def load_key(purpose: str) -> PseudonymKey:
    """The configured key, or a refusal naming where to put one."""
    raw = os.environ.get(KEY_ENV)
    if raw:
        return _checked(raw, f"env {KEY_ENV}")
    path = key_file()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MissingKeyError(
            f"refusing to {purpose}: no pseudonym key (set {KEY_ENV}, or create the 0600 key "
            f"file {path} with `studyhub privacy keygen`); nothing was done") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"pseudonym key file {path} is readable by others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    return _checked(path.read_text(), f"key file {path}")


def generate_key_file(path: Path | None = None) -> Path:
    """Write a new random key (256 bits, hex) to a 0600 file; never replaces an existing key,
    because every pseudonym made with it would change."""
    path = Path(path) if path else key_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_atomically(path, lambda f: f.write((secrets.token_hex(32) + "\n").encode()))
