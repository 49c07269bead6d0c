"""Retries per part: an object store that answers ``503 SlowDown`` to some part uploads (as
Spaces and S3 do under load) does not fail the backup — each refused part is sent again, with
backoff, and the set restores equal. A store that keeps refusing ends the backup in one line,
with its multipart uploads aborted and nothing listed as a set.

Between the real boto3 client and the test's S3 server (moto, on loopback) sits a small HTTP
proxy of this file that forwards every request and refuses chosen ``UploadPart`` requests."""

from __future__ import annotations

import dataclasses
import http.client
import re
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from studyhub.errors import StudyhubError
from studyhub.ops import backup as ops
from studyhub.ops.backup import s3
from tests.test_backup import drop, table_rows
from tests.test_backup_remote import (  # noqa: F401 - module fixtures reused
    aws_env,
    bucket,
    config,
    databases_like,
    keys,
    objects,
    remote_set,
    s3_client,
    source,
)

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyProxy:
    """Forwards every request to ``upstream``; refuses with 503 SlowDown the first attempt of
    the first ``refuse_parts`` part numbers seen (or every part upload, ``always=True``).
    Records each part upload attempt as (upload id, part number, answered status).
    ``short_heads``: a HEAD of a key containing that text is answered one byte short of the
    object's real size (a store that kept less than it was sent)."""

    def __init__(self, upstream: str, refuse_parts: int = 2, always: bool = False,
                 refuse_completions: bool = False, short_heads: str | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.refuse_parts, self.always = refuse_parts, always
        self.refuse_completions = refuse_completions
        self.short_heads = short_heads
        self.heads: list[str] = []  # each HEAD's path
        self.completions_refused = 0
        self.attempts: list[tuple[str, int, int]] = []
        self.payload_hashes: list[str] = []  # each part upload's x-amz-content-sha256
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _slow_down(self) -> None:
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(SLOW_DOWN)

            def _handle(self) -> None:
                body = self._body()
                query = parse_qs(urlsplit(self.path).query)
                if (proxy.refuse_completions and self.command == "POST" and "uploadId" in query):
                    with proxy.lock:
                        proxy.completions_refused += 1
                    self._slow_down()
                    return
                if self.command == "PUT" and "partNumber" in query and "uploadId" in query:
                    upload, part = query["uploadId"][0], int(query["partNumber"][0])
                    with proxy.lock:
                        proxy.payload_hashes.append(self.headers.get("x-amz-content-sha256", ""))
                        seen = {(u, p) for u, p, _ in proxy.attempts}
                        refused_parts = {(u, p) for u, p, s in proxy.attempts if s == 503}
                        refuse = proxy.always or (
                            (upload, part) not in seen and len(refused_parts) < proxy.refuse_parts)
                        proxy.attempts.append((upload, part, 503 if refuse else 200))
                    if refuse:
                        self._slow_down()
                        return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "content-length",
                                                "connection")}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    res = conn.getresponse()
                    data = res.read()
                finally:
                    conn.close()
                length = len(data)
                if self.command == "HEAD":  # the object's size, as the store answered it
                    with proxy.lock:
                        proxy.heads.append(self.path)
                    length = int(res.getheader("Content-Length") or 0)
                    if proxy.short_heads and proxy.short_heads in self.path:
                        length -= 1
                self.send_response(res.status)
                for k, v in res.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection",
                                         "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_refused_parts_are_sent_again_and_the_set_restores_equal(cluster, source, config,
                                                                 bucket, s3_server):
    with FlakyProxy(s3_server, refuse_parts=2) as proxy:
        where = dataclasses.replace(config, target=f"s3://{bucket}/flaky-{uuid.uuid4().hex[:6]}",
                                    endpoint_url=proxy.url)
        result = ops.create_backup(source, config=where, jobs=2)
    refused = [(u, p) for u, p, s in proxy.attempts if s == 503]
    assert len(refused) == 2, proxy.attempts
    # a store on loopback: the part bodies were not hashed into the signature (sha256 is in
    # the manifest); a resent part was the same bytes (the set restores equal, below)
    assert proxy.payload_hashes and set(proxy.payload_hashes) == {"UNSIGNED-PAYLOAD"}
    # each refused part was sent again and accepted
    for u, p in refused:
        assert (u, p, 200) in proxy.attempts, (u, p)
    where = dataclasses.replace(where, endpoint_url=s3_server)  # the store itself from here on
    listed = {s.name: s for s in ops.list_target_sets(where.target, config=where)}
    assert listed[result.name].status == "complete"
    target_db = f"bkr_retry_{uuid.uuid4().hex[:8]}"
    try:
        ops.restore_set(None, result.name, source, target_db, config=where, jobs=2)
        assert table_rows(source, target_db) == table_rows(source, source.database)
    finally:
        drop(cluster, target_db, target_db + "_restoring")


def assert_nothing_left(s3_server, bucket: str, prefix: str, where) -> None:
    """No open multipart upload, no object below ``prefix``, no set listed (asked of the
    store itself, not through the proxy)."""
    client = s3_client(s3_server)
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", []) == []
    assert objects(s3_server, bucket, prefix + "/") == {}
    where = dataclasses.replace(where, endpoint_url=s3_server)
    assert ops.list_target_sets(where.target, config=where) == []


def test_a_store_that_keeps_refusing_ends_in_one_line_and_leaves_nothing(source, config,
                                                                         bucket, s3_server):
    prefix = f"refusing-{uuid.uuid4().hex[:6]}"
    with FlakyProxy(s3_server, always=True) as proxy:
        where = dataclasses.replace(config, target=f"s3://{bucket}/{prefix}",
                                    endpoint_url=proxy.url, request_attempts=3)
        with pytest.raises(StudyhubError) as err:
            ops.create_backup(source, config=where, jobs=2)
    message = str(err.value)
    assert "\n" not in message and ("SlowDown" in message or "503" in message), message
    # request_attempts tries of a part before giving up, no more
    per_part: dict[tuple[str, int], int] = {}
    for u, p, _ in proxy.attempts:
        per_part[(u, p)] = per_part.get((u, p), 0) + 1
    assert max(per_part.values()) == 3, per_part
    assert_nothing_left(s3_server, bucket, prefix, where)


def test_a_refused_completion_fails_the_backup_in_one_line_and_leaves_nothing(
        source, config, bucket, s3_server):
    """Every part is accepted but the store refuses to complete the multipart uploads: the
    uploads finish in the background while the workers go on, so the failure is told where
    the set waits for them, before any manifest — one line, uploads aborted, nothing listed."""
    prefix = f"uncompleted-{uuid.uuid4().hex[:6]}"
    with FlakyProxy(s3_server, refuse_parts=0, refuse_completions=True) as proxy:
        where = dataclasses.replace(config, target=f"s3://{bucket}/{prefix}",
                                    endpoint_url=proxy.url, request_attempts=2)
        with pytest.raises(StudyhubError) as err:
            ops.create_backup(source, config=where, jobs=2)
    message = str(err.value)
    assert "\n" not in message and ("SlowDown" in message or "503" in message), message
    assert proxy.completions_refused >= 2  # botocore tried again, then gave up
    assert all(s == 200 for _, _, s in proxy.attempts) and proxy.attempts  # parts went in
    assert_nothing_left(s3_server, bucket, prefix, where)


def test_each_object_is_sized_by_the_store_once_uploaded(source, config, bucket, s3_server):
    """Every object of the set is asked of the store (HEAD) once its upload completed, each
    once, and the sizes agree — the set's check before its manifest (no listing at the end)."""
    with FlakyProxy(s3_server, refuse_parts=0) as proxy:
        where = dataclasses.replace(config, target=f"s3://{bucket}/sized-{uuid.uuid4().hex[:6]}",
                                    endpoint_url=proxy.url)
        result = ops.create_backup(source, config=where, jobs=2)
    where = dataclasses.replace(where, endpoint_url=s3_server)
    opened = ops.open_target(where.target, where).open_set(result.name, where)
    asked = sorted(urlsplit(h).path.split(f"/{result.name}/", 1)[1] for h in proxy.heads
                   if f"/{result.name}/" in h)  # (the bucket's HEAD aside)
    assert asked == sorted(f.path for f in opened.manifest.files)


def test_an_object_the_store_holds_short_fails_the_backup_and_leaves_nothing(
        source, config, bucket, s3_server):
    """The store answers, for one table's object, a size one byte short of what was sent: the
    set is not completed — one line naming the object and both sizes, every object removed,
    no manifest, nothing listed."""
    prefix = f"short-{uuid.uuid4().hex[:6]}"
    with FlakyProxy(s3_server, refuse_parts=0, short_heads="blob") as proxy:
        where = dataclasses.replace(config, target=f"s3://{bucket}/{prefix}",
                                    endpoint_url=proxy.url)
        with pytest.raises(StudyhubError) as err:
            ops.create_backup(source, config=where, jobs=2)
    message = str(err.value)
    assert "\n" not in message, message
    shorted = re.search(r"uploaded (\S+) is (\d+) bytes in s3://\S+, (\d+) were written; "
                        r"the set was not completed", message)
    assert shorted and "blob" in shorted[1], message
    assert int(shorted[2]) == int(shorted[3]) - 1
    assert any("blob" in h for h in proxy.heads)
    assert_nothing_left(s3_server, bucket, prefix, where)


# ------------------------------------------------------------------ dropped downloads
_REQUEST_HEAD = re.compile(rb"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", re.S)


class DroppingProxy:
    """A loopback TCP proxy in front of ``upstream`` that passes bytes both ways and, on a
    connection carrying a GET of a key containing ``cut_key``, closes both sides after the
    answer's head and ``after_bytes`` of its body — the first ``cuts`` times (``cuts=None``:
    every time).
    Records each GET of that key with its Range header (None: the whole object)."""

    def __init__(self, upstream: str, cut_key: str, after_bytes: int,
                 cuts: int | None = 1) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.cut_key, self.after_bytes, self.cuts_left = cut_key.encode(), after_bytes, cuts
        self.gets: list[str | None] = []
        self.cut = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopping = False

    def _serve(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            armed = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, armed),
                             daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, armed),
                             daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket,
                  armed: threading.Event) -> None:
        buf = b""
        try:
            while data := client.recv(1 << 16):
                buf = (buf + data)[-(1 << 16):]  # request heads are small; bodies pass by
                for m in _REQUEST_HEAD.finditer(buf):
                    if m[1] == b"GET" and self.cut_key in m[2]:
                        rng = re.search(rb"(?im)^range: *(\S+)", m[3])
                        with self.lock:
                            self.gets.append(rng[1].decode() if rng else None)
                            if self.cuts_left is None or self.cut < self.cuts_left:
                                armed.set()
                if buf.endswith(b"\r\n\r\n"):
                    buf = b""
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _answers(self, upstream: socket.socket, client: socket.socket,
                 armed: threading.Event) -> None:
        head, body = b"", None  # body: bytes of the armed answer's body passed on so far
        try:
            while data := upstream.recv(1 << 16):
                if armed.is_set():
                    if body is None:  # pass the answer's head on whole
                        head += data
                        end = head.find(b"\r\n\r\n")
                        if end < 0:
                            client.sendall(data)
                            continue
                        extra = len(head) - end - 4  # body bytes in this chunk
                        client.sendall(data[: len(data) - extra])
                        data, body = data[len(data) - extra:], 0
                    if body + len(data) >= self.after_bytes:
                        client.sendall(data[: self.after_bytes - body])
                        with self.lock:
                            self.cut += 1
                        break  # the connection drops mid-answer
                    body += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def __enter__(self) -> DroppingProxy:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True
        self.listener.close()


def _blob_object(where, name: str) -> str:
    source_set = ops.open_target(where.target, where).open_set(name, where)
    return next(f.path for f in source_set.manifest.table_files if f.table == "blob")


def test_a_download_cut_mid_object_resumes_with_a_ranged_get_and_restores_equal(
        cluster, source, config, remote_set, monkeypatch):
    """The 12 MiB table's object: its connection is cut after 3 MiB of the answer. The restore
    (which hashes every object while it streams) reopens it at the byte it reached with a
    ranged GET, and the database restored equals the source."""
    monkeypatch.setattr(s3, "READ_BACKOFF_S", 0.01)
    rel = _blob_object(config, remote_set.name)
    with DroppingProxy(config.endpoint_url, rel, after_bytes=3 << 20, cuts=1) as proxy:
        where = dataclasses.replace(config, endpoint_url=proxy.url)
        target_db = f"bkr_cut_{uuid.uuid4().hex[:8]}"
        try:
            result = ops.restore_set(None, remote_set.name, source, target_db, config=where,
                                     jobs=2)
            assert table_rows(source, target_db) == table_rows(source, source.database)
            assert result.tables > 0
        finally:
            drop(cluster, target_db, target_db + "_restoring")
    assert proxy.cut == 1
    first, again = proxy.gets  # one whole GET, cut; one ranged GET from where it stopped
    assert first is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", again)[1])
    assert 0 < resumed_at <= 3 << 20


def test_verify_through_a_cut_connection_reads_on_and_every_hash_matches(
        config, remote_set, monkeypatch):
    monkeypatch.setattr(s3, "READ_BACKOFF_S", 0.01)
    rel = _blob_object(config, remote_set.name)
    with DroppingProxy(config.endpoint_url, rel, after_bytes=5 << 20, cuts=2) as proxy:
        where = dataclasses.replace(config, endpoint_url=proxy.url)
        result = ops.verify_set(where.target, remote_set.name, config=where)
    assert result.ok, result.problems
    assert proxy.cut == 2 and len(proxy.gets) == 3 and proxy.gets[0] is None
    offsets = [int(re.fullmatch(r"bytes=(\d+)-", g)[1]) for g in proxy.gets[1:]]
    assert 0 < offsets[0] < offsets[1]  # each resumed where the last one stopped


def test_a_download_that_keeps_dropping_ends_in_one_line_and_restores_nothing(
        cluster, source, config, remote_set, monkeypatch):
    """Every answer for the 12 MiB object is cut right after its head: no read makes progress,
    so after READ_ATTEMPTS tries the restore stops in one line. Nothing exists under the
    target's name; the marked staging database is what a later run resumes (and it does,
    once the store answers)."""
    monkeypatch.setattr(s3, "READ_BACKOFF_S", 0.01)
    rel = _blob_object(config, remote_set.name)
    target_db = f"bkr_drop_{uuid.uuid4().hex[:8]}"
    try:
        with DroppingProxy(config.endpoint_url, rel, after_bytes=0, cuts=None) as proxy:
            where = dataclasses.replace(config, endpoint_url=proxy.url)
            with pytest.raises(StudyhubError) as err:
                ops.restore_set(None, remote_set.name, source, target_db, config=where, jobs=2)
        message = str(err.value)
        assert "\n" not in message
        assert (f"reading {remote_set.name}/{rel} from {config.target} failed "
                f"{s3.READ_ATTEMPTS} times") in message, message
        assert proxy.cut == s3.READ_ATTEMPTS == len(proxy.gets)
        assert databases_like(cluster, target_db) == []  # nothing under the target's name
        assert databases_like(cluster, f"{target_db}%") in ([], [f"{target_db}_restoring"])
        ops.restore_set(None, remote_set.name, source, target_db, config=config, jobs=2)
        assert table_rows(source, target_db) == table_rows(source, source.database)
    finally:
        drop(cluster, target_db, target_db + "_restoring")


@pytest.mark.parametrize("endpoint, signed", [
    (None, False),  # AWS S3, over HTTPS
    ("https://fra1.digitaloceanspaces.com", False),
    ("http://127.0.0.1:9000", False),
    ("http://localhost:9000", False),
    ("http://[::1]:9000", False),
    ("http://10.0.0.5:9000", True),  # plain HTTP across a network: the body is signed
    ("http://minio.internal:9000", True),
])
def test_part_bodies_are_signed_only_over_plain_http_to_another_host(config, endpoint, signed):
    assert s3.sign_payload(endpoint) is signed
    where = dataclasses.replace(config, endpoint_url=endpoint, region="us-east-1")
    client = s3.S3Store("s3://some-bucket/p", where).client  # made, not connected
    assert client.meta.config.s3["payload_signing_enabled"] is signed
