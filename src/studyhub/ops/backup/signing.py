"""Signed manifests: an Ed25519 signature (``cryptography``) over a set's ``manifest.json``
bytes, stored beside it as ``manifest.sig``.

Why: age recipients are public keys, so anyone who can write to the bucket can encrypt new
objects to them and write a manifest with matching sizes and sha256 — a substituted set would
decrypt and verify. A signing key that only the backup host holds (a 0600 PEM file) closes
that: a profile with ``verify_key`` (the public half, ``ed25519:BASE64``) refuses to verify or
restore a set whose manifest is unsigned or signed by another key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from studyhub.audit import audited
from studyhub.ops.backup.crypto import check_private_file, fingerprint, write_identity
from studyhub.ops.backup.setformat import BackupError

SIGNATURE = "manifest.sig"
_PUBLIC_RE = re.compile(r"ed25519:(?P<b64>[A-Za-z0-9+/]{43}=)")  # fullmatch


def public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def key_fingerprint(public: str) -> str:
    return "sha256:" + hashlib.sha256(public.encode()).hexdigest()[:16]


def parse_verify_key(text: str) -> Ed25519PublicKey:
    m = _PUBLIC_RE.fullmatch(text.strip())
    if not m:
        raise BackupError("verify_key must be an Ed25519 public key written as ed25519:BASE64 "
                          "(what `studyhub backup keygen --signing` prints)")
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(m.group("b64")))


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    check_private_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        raise BackupError(f"signing key {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BackupError(f"signing key {path} is not an Ed25519 key")
    return key


def write_signing_key(path: Path) -> str:
    """A new Ed25519 signing key (PEM, 0600, never overwriting); returns its public text."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists; refusing to overwrite a signing key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return public_text(key.public_key())


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of ``manifest.sig``: the signature in base64, one line."""
    return base64.b64encode(key.sign(manifest_bytes)) + b"\n"


def check_signature(name: str, manifest_bytes: bytes, signature: bytes | None,
                    verify_key: str) -> None:
    """Refuse a manifest that is unsigned or not signed by ``verify_key``."""
    public = parse_verify_key(verify_key)
    if signature is None:
        raise BackupError(f"backup set {name} is not signed, and this profile only accepts sets "
                          f"signed by {key_fingerprint(verify_key.strip())} (verify_key)")
    try:
        public.verify(base64.b64decode(signature.strip(), validate=True), manifest_bytes)
    except (InvalidSignature, ValueError):
        raise BackupError(
            f"backup set {name}: the manifest's signature does not verify with "
            f"{key_fingerprint(verify_key.strip())}: the manifest was changed or signed by "
            "another key; not trusting it") from None


@dataclass
class KeyResult:
    """A key ``backup keygen`` wrote: where, and the public half to put in the profile."""

    path: str
    kind: str  # age-identity | ed25519-signing
    public: str  # age1… (a recipient) or ed25519:BASE64 (a verify_key)
    fingerprint: str
    profile_line: str  # what to add to [<profile>.backup]


def keygen(path: Path, *, signing: bool = False) -> KeyResult:
    """A new age identity (or, with ``signing``, an Ed25519 signing key): a 0600 file at
    ``path``, never overwriting one. Audited as ``backup.keygen`` (path, kind, fingerprint)."""
    kind = "ed25519-signing" if signing else "age-identity"
    with audited("backup.keygen", "-", path=str(path), kind=kind) as line:
        if signing:
            public = write_signing_key(path)
            fp, profile_line = key_fingerprint(public), f'verify_key = "{public}"'
        else:
            public = write_identity(path)
            fp, profile_line = fingerprint(public), f'recipients = ["{public}"]'
        line["fingerprint"] = fp
    return KeyResult(str(path), kind, public, fp, profile_line)
