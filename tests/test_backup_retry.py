"""Retries per part: an object store that answers ``503 SlowDown`` to some part uploads (as
Spaces and S3 do under load) does not fail the backup — each refused part is sent again, with
backoff, and the set restores equal. A store that keeps refusing ends the backup in one line,
with its multipart uploads aborted and nothing listed as a set.

Between the real boto3 client and the test's S3 server (moto, on loopback) sits a small HTTP
proxy of this file that forwards every request and refuses chosen ``UploadPart`` requests."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from studyhub.errors import StudyhubError
from studyhub.ops import backup as ops
from tests.test_backup import drop, table_rows
from tests.test_backup_remote import (  # noqa: F401 - module fixtures reused
    aws_env,
    bucket,
    config,
    keys,
    objects,
    s3_client,
    source,
)

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FlakyProxy:
    """Forwards every request to ``upstream``; refuses with 503 SlowDown the first attempt of
    the first ``refuse_parts`` part numbers seen (or every part upload, ``always=True``).
    Records each part upload attempt as (upload id, part number, answered status)."""

    def __init__(self, upstream: str, refuse_parts: int = 2, always: bool = False) -> None:
        self.upstream = urlsplit(upstream)
        self.refuse_parts, self.always = refuse_parts, always
        self.attempts: list[tuple[str, int, int]] = []
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

            def _handle(self) -> None:
                body = self._body()
                query = parse_qs(urlsplit(self.path).query)
                if self.command == "PUT" and "partNumber" in query and "uploadId" in query:
                    upload, part = query["uploadId"][0], int(query["partNumber"][0])
                    with proxy.lock:
                        seen = {(u, p) for u, p, _ in proxy.attempts}
                        refused_parts = {(u, p) for u, p, s in proxy.attempts if s == 503}
                        refuse = proxy.always or (
                            (upload, part) not in seen and len(refused_parts) < proxy.refuse_parts)
                        proxy.attempts.append((upload, part, 503 if refuse else 200))
                    if refuse:
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOW_DOWN)))
                        self.end_headers()
                        self.wfile.write(SLOW_DOWN)
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
                self.send_response(res.status)
                for k, v in res.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection",
                                         "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
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
    client = s3_client(s3_server)
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", []) == []
    assert objects(s3_server, bucket, prefix + "/") == {}
    where = dataclasses.replace(where, endpoint_url=s3_server)
    assert ops.list_target_sets(where.target, config=where) == []
