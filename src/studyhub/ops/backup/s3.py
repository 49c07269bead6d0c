"""Object storage through S3's API — DigitalOcean Spaces, AWS S3, any S3-compatible store —
with boto3/botocore (signing, retries, the multipart-upload calls). Nothing here signs a
request or speaks HTTP itself.

Credentials come only from the environment or the AWS credential chain (``AWS_ACCESS_KEY_ID``
…, ``~/.aws/credentials``, ``AWS_PROFILE``), or from a 0600 credentials file named in the
profile's ``[<profile>.backup]`` table; never from argv or studyhub.toml. They never appear in
an error: every failure is told as one line made here from the error's code (``NoSuchBucket``,
``InvalidAccessKeyId`` …), never the server's or the library's own text; and botocore's,
s3transfer's and urllib3's loggers are held at WARNING (their debug output carries request
headers).

Uploads stream (``upload.py``); each request is retried by botocore (standard retry mode:
exponential backoff with jitter, up to ``request_attempts`` tries in all, 8 by default). Part
bodies are not hashed for the signature where the transport already protects them (HTTPS)
or there is no network to cross (a store on loopback): each object's sha256 is in the manifest,
checked by ``verify`` and ``restore``. Downloads stream (:class:`ObjectReader`), resuming from
the byte they stopped at with a ranged GET of the same ETag.
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from studyhub.ops.backup.crypto import check_private_file
from studyhub.ops.backup.setformat import BackupError
from studyhub.profiles import BackupConfig

MIB = 1 << 20
READ_ATTEMPTS = 5  # tries of one read without progress (each reopens with a ranged GET)
READ_BACKOFF_S = 0.5  # first wait before reopening; doubles, at most 8 s
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # fullmatch
_PREFIX_RE = re.compile(r"[A-Za-z0-9._=+-]+(/[A-Za-z0-9._=+-]+)*")  # fullmatch
_STREAM_ERRORS = (bex.ReadTimeoutError, bex.ResponseStreamingError, bex.IncompleteReadError,
                  bex.ConnectionClosedError, bex.EndpointConnectionError, ConnectionError)


def quiet_library_logs() -> None:
    """botocore logs request headers (the access key id) at DEBUG: keep these at WARNING."""
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` → (bucket, prefix without slashes at either end)."""
    parts = urlsplit(url)
    if "@" in parts.netloc:  # never echo it: it may hold a key
        raise BackupError("an s3:// target must not carry credentials in its URL; use the "
                          "environment or a credentials file")
    if parts.query or parts.fragment:
        raise BackupError("an s3:// target is s3://BUCKET/PREFIX, without ? or #")
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise BackupError(f"{bucket!r} is not a valid bucket name (3-63 lower-case letters, "
                          "digits, dots and hyphens)")
    if prefix and (not _PREFIX_RE.fullmatch(prefix) or ".." in prefix.split("/")):
        raise BackupError(f"prefix {prefix!r} may hold letters, digits and ._=+- between slashes")
    return bucket, prefix


def _check_endpoint(url: str) -> str:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise BackupError("endpoint_url must not carry credentials")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BackupError("endpoint_url must be https://HOST[:PORT] (e.g. "
                          "https://fra1.digitaloceanspaces.com)")
    return url.rstrip("/")


def _session(config: BackupConfig) -> boto3.session.Session:
    path = config.credentials_file
    if path is None:
        return boto3.session.Session()  # environment, ~/.aws, AWS_PROFILE, instance roles …
    check_private_file(path, "credentials file")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(), source="credentials")
    except (configparser.Error, OSError, UnicodeDecodeError):  # its text may quote a line
        raise BackupError(f"credentials file {path} is not an AWS-style INI file "
                          "([default] aws_access_key_id = … aws_secret_access_key = …)") from None
    section = config.credentials_section
    if not parser.has_section(section):
        raise BackupError(f"credentials file {path} has no [{section}] section")
    values = parser[section]
    if not values.get("aws_access_key_id") or not values.get("aws_secret_access_key"):
        raise BackupError(f"credentials file {path} [{section}] needs aws_access_key_id and "
                          "aws_secret_access_key")
    return boto3.session.Session(
        aws_access_key_id=values["aws_access_key_id"].strip(),
        aws_secret_access_key=values["aws_secret_access_key"].strip(),
        aws_session_token=(values.get("aws_session_token") or "").strip() or None)


def sign_payload(endpoint: str | None) -> bool:
    """Whether each request's body is hashed (sha256) into its signature: only over plain HTTP
    to another host. HTTPS (AWS, Spaces) protects the body in transit, and a store on loopback
    has no network in between; there the hash would cost a pass over every byte uploaded
    (botocore's default signs it over HTTP, and over HTTPS without a checksum header)."""
    if endpoint is None:
        return False  # AWS S3: https
    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return False
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


@dataclass
class StoredObject:
    rel: str  # key below the target's prefix
    bytes: int
    modified: datetime


@dataclass
class OpenUpload:
    rel: str
    upload_id: str
    initiated: datetime


class S3Store:
    """One bucket and prefix on one endpoint: the objects below the prefix, by relative key."""

    def __init__(self, url: str, config: BackupConfig) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.config = config
        self.endpoint = _check_endpoint(config.endpoint_url) if config.endpoint_url else None
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def where(self) -> str:
        """The endpoint, for messages: a host, never a credential."""
        if self.endpoint:
            return urlsplit(self.endpoint).netloc
        return f"AWS S3 ({self.config.region or 'default region'})"

    @property
    def client(self) -> Any:
        if self._client is None:
            quiet_library_logs()
            cfg = Config(
                retries={"mode": "standard",
                         "total_max_attempts": self.config.request_attempts},
                connect_timeout=10, read_timeout=120, tcp_keepalive=True,
                max_pool_connections=max(10, 2 * self.config.parts_in_flight + 4),
                s3={"addressing_style": self.config.addressing_style,
                    "payload_signing_enabled": sign_payload(self.endpoint)},
                # S3-compatible stores (Spaces, MinIO …) may not take the newest checksum
                # headers; each object's sha256 is in the manifest anyway
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                user_agent_extra="studyhub-backup")
            try:
                self._client = _session(self.config).client(
                    "s3", endpoint_url=self.endpoint, region_name=self.config.region, config=cfg)
            except bex.BotoCoreError as exc:
                raise self.error(exc, "connecting") from None
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key

    # ------------------------------------------------------------------------ errors
    def error(self, exc: BaseException, what: str) -> BackupError:
        """One line for a failed request: made from the error code, never the error's text
        (which may quote request details)."""
        target = f"{self.url} at {self.where}"
        if isinstance(exc, BackupError):
            return exc
        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (code == "404" and what == "checking the bucket"):
                return BackupError(f"bucket {self.bucket} does not exist at {self.where}")
            if code == "InvalidAccessKeyId":
                return BackupError(f"{self.where} does not know the access key (wrong, deleted or "
                                   f"revoked) while {what}: check the backup credentials")
            if code == "SignatureDoesNotMatch":
                return BackupError(f"{self.where} refused the secret key while {what} (it does "
                                   "not match the access key): check the backup credentials")
            if code in ("ExpiredToken", "TokenRefreshRequired", "RequestExpired"):
                return BackupError(f"the backup credentials have expired ({what}, {target})")
            if code in ("AccessDenied", "AllAccessDisabled", "403"):
                return BackupError(f"access denied while {what} ({target}): the credentials lack "
                                   "the permission, or were revoked")
            if code in ("NoSuchKey", "404"):
                return BackupError(f"{what}: not found in {target}")
            return BackupError(f"{what} failed ({target}): {code or 'error'} (HTTP {status})")
        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return BackupError(f"no credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY, a 0600 credentials_file in the profile's "
                               "[backup] table, or ~/.aws/credentials")
        if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError)):
            return BackupError(f"cannot reach {self.where} while {what}")
        if isinstance(exc, bex.BotoCoreError):
            return BackupError(f"{what} failed ({target}): {type(exc).__name__}")
        return BackupError(f"{what} failed ({target}): {type(exc).__name__}")

    def call(self, what: str, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except (bex.BotoCoreError, bex.ClientError) as exc:
            raise self.error(exc, what) from None

    # ------------------------------------------------------------------------ objects
    def check_bucket(self) -> None:
        self.call("checking the bucket", "head_bucket")

    def objects(self, under: str = "") -> list[StoredObject]:
        prefix = self.key(under) if under else (f"{self.prefix}/" if self.prefix else "")
        out = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    out.append(StoredObject(self.rel(o["Key"]), o["Size"], o["LastModified"]))
        except (bex.BotoCoreError, bex.ClientError) as exc:
            raise self.error(exc, "listing objects") from None
        return out

    def open_uploads(self) -> list[OpenUpload]:
        """Multipart uploads started below the prefix and neither completed nor aborted."""
        out = []
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                for u in page.get("Uploads", []):
                    out.append(OpenUpload(self.rel(u["Key"]), u["UploadId"], u["Initiated"]))
        except (bex.BotoCoreError, bex.ClientError) as exc:
            raise self.error(exc, "listing unfinished uploads") from None
        return out

    def abort_upload(self, up: OpenUpload) -> None:
        self.call(f"aborting the upload of {up.rel}", "abort_multipart_upload",
                  Key=self.key(up.rel), UploadId=up.upload_id)

    def get_bytes(self, rel: str) -> bytes | None:
        """A small object's content; None when it does not exist."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()
        except bex.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self.error(exc, f"reading {rel}") from None
        except bex.BotoCoreError as exc:
            raise self.error(exc, f"reading {rel}") from None

    def size(self, rel: str) -> int:
        """An object's size as the store answers it (``HEAD``)."""
        return int(self.call(f"checking {rel}", "head_object", Key=self.key(rel))["ContentLength"])

    def put_bytes(self, rel: str, data: bytes) -> None:
        self.call(f"writing {rel}", "put_object", Key=self.key(rel), Body=data)

    def delete(self, rels: list[str]) -> None:
        for i in range(0, len(rels), 1000):
            batch = rels[i:i + 1000]
            res = self.call("deleting objects", "delete_objects", Delete={
                "Objects": [{"Key": self.key(r)} for r in batch], "Quiet": True})
            if res.get("Errors"):
                first = res["Errors"][0]
                raise BackupError(f"deleting {self.rel(first.get('Key', '?'))} failed "
                                  f"({self.url}): {first.get('Code', 'error')}")

    def reader(self, rel: str) -> "ObjectReader":
        return ObjectReader(self, rel)



class ObjectReader:
    """An object's bytes as a stream; a dropped connection resumes from the next byte with a
    ranged GET of the same version (``If-Match`` its ETag). One read gives up after
    READ_ATTEMPTS tries that bring no byte (backoff READ_BACKOFF_S, doubling, at most 8 s); a
    connection that drops again after some progress starts a new count."""

    def __init__(self, store: S3Store, rel: str) -> None:
        self.store, self.rel = store, rel
        self.pos = 0
        self.length: int | None = None
        self.etag: str | None = None
        self.body: Any = None

    def _open(self) -> None:
        kw: dict[str, Any] = {"Key": self.store.key(self.rel)}
        if self.pos:
            kw["Range"] = f"bytes={self.pos}-"
        if self.etag:
            kw["IfMatch"] = self.etag
        res = self.store.call(f"reading {self.rel}", "get_object", **kw)
        if self.length is None:
            self.length = int(res["ContentLength"])
            self.etag = res.get("ETag")
        self.body = res["Body"]

    def read(self, n: int = -1) -> bytes:
        for attempt in range(READ_ATTEMPTS):
            try:
                if self.body is None:
                    if self.length is not None and self.pos >= self.length:
                        return b""
                    self._open()
                data = self.body.read(n if n and n > 0 else MIB)
                if not data and self.length is not None and self.pos < self.length:
                    raise ConnectionError("short read")
                self.pos += len(data)
                return data
            except _STREAM_ERRORS:
                self.close()
                time.sleep(min(8.0, READ_BACKOFF_S * 2 ** attempt))
        raise BackupError(f"reading {self.rel} from {self.store.url} failed {READ_ATTEMPTS} "
                          f"times (the connection kept dropping at byte {self.pos})")

    def close(self) -> None:
        if self.body is not None:
            try:
                self.body.close()
            except Exception:  # noqa: BLE001 - closing a dropped stream
                pass
            self.body = None
