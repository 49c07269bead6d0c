"""An S3-compatible server for the tests: moto's standalone server (``moto[server]``) bound to
127.0.0.1 on a free port, started and stopped by the ``s3_server`` fixture. The boto3 client
under test talks HTTP to it as it would to DigitalOcean Spaces. Its state (buckets, IAM users)
is per process, shared by every server in it."""

from __future__ import annotations

import logging
import os
import socket
import urllib.request

from moto.server import ThreadedMotoServer

# Never a real account or a real metadata service from a test.
os.environ.setdefault("AWS_CONFIG_FILE", "/nonexistent/aws-config")
os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server() -> tuple[ThreadedMotoServer, str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def set_auth(url: str, enforce_after: float | str) -> None:
    """Make the server check credentials against its own IAM users after ``enforce_after``
    more requests (``"inf"``: never, the default)."""
    req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=str(enforce_after).encode(),
                                 method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as res:
        res.read()
