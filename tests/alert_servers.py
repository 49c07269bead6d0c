"""Real receivers on loopback for the alert tests: an HTTP server that records webhook POSTs
(http.server on a thread) and an SMTP server with STARTTLS and AUTH (aiosmtpd, a trustme
certificate)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class WebhookReceiver:
    """Records every POST (path, JSON body); answers ``status`` (or the next of
    ``statuses``)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.statuses: list[int] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append((self.path, json.loads(body)))
                code = outer.statuses.pop(0) if outer.statuses else outer.status
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def texts(self) -> list[str]:
        return [body["text"] for _path, body in self.posts]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SmtpServer:
    port: int
    ca_file: Path
    username: str
    password: str
    messages: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # usernames that logged in
    controller: Any = None

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]

    def stop(self) -> None:
        self.controller.stop()


def start_smtp(tmp: Path, username: str, password: str) -> SmtpServer:
    """aiosmtpd on 127.0.0.1: STARTTLS required before AUTH, AUTH required before MAIL."""
    import trustme
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = SmtpServer(free_port(), ca_file, username, password)

    class Handler:
        async def handle_DATA(self, srv: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            server.messages.append(message_from_bytes(envelope.original_content
                                                      or envelope.content))
            server.recipients.append(list(envelope.rcpt_tos))
            return "250 OK"

    def authenticator(srv: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == username.encode()
              and auth_data.password == password.encode())
        if ok:
            server.logins.append(username)
        return AuthResult(success=ok, handled=False)

    server.controller = Controller(Handler(), hostname="127.0.0.1", port=server.port,
                                   tls_context=server_ctx, require_starttls=True,
                                   authenticator=authenticator, auth_required=True)
    server.controller.start()
    return server
