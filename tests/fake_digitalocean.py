"""A fake of the DigitalOcean API's database endpoints that ``studyhub cluster`` uses, for tests
with the real ``pydo`` client.

Shapes follow DigitalOcean's published OpenAPI description (github.com/digitalocean/openapi,
specification/resources/databases): objects wrapped in ``database`` / ``replica`` / ``pool`` /
``databases`` / ``replicas`` / ``pools`` / ``backups`` keys, errors as ``{"id", "message",
"request_id"}``, ``ratelimit-*`` headers, list pagination with ``links.pages`` and
``meta.total``. What it adds for tests:

- every request is recorded (method, path, query, JSON body) in ``requests``;
- asynchronous states move on by calls: a new cluster is ``creating`` (a resize ``resizing``, a
  replica ``forking``) for ``polls_until_online`` reads of it, then ``online``;
- ``fail(method, path_regex, status, times, retry_after)`` injects 429/5xx answers;
- ``serve_tls(fake, directory)`` serves it over TLS on 127.0.0.1 with a throwaway CA (trustme),
  so the client verifies certificates as it would against api.digitalocean.com.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trustme
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

PG_SIZES = ["db-s-1vcpu-1gb", "db-s-1vcpu-2gb", "db-s-2vcpu-4gb", "db-s-4vcpu-8gb",
            "db-s-6vcpu-16gb", "db-s-8vcpu-32gb"]
NAME_RE = re.compile(r"[a-z][a-z0-9-]{1,61}[a-z0-9]")  # whole names: fullmatch
ERROR_IDS = {401: "unauthorized", 404: "not_found", 422: "unprocessable_entity",
             429: "too_many_requests", 500: "server_error", 502: "bad_gateway",
             503: "service_unavailable", 504: "gateway_timeout"}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    retry_after: str | None = None


@dataclass
class FakeDigitalOcean:
    token: str = "fake-do-token"
    polls_until_online: int = 2
    max_per_page: int = 200
    connection_host: str = "127.0.0.1"
    connection_port: int = 25060
    requests: list[Recorded] = field(default_factory=list)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    backups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    replicas: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    pools: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    pending: dict[tuple[str, ...], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.app = self._build_app()

    # ------------------------------------------------------------------ test API
    def reset(self) -> None:
        with self.lock:
            for store in (self.requests, self.faults):
                store.clear()
            for d in (self.clusters, self.backups, self.replicas, self.pools, self.pending):
                d.clear()

    def add_cluster(self, name: str, *, size: str = "db-s-1vcpu-2gb", num_nodes: int = 1,
                    region: str = "nyc3", version: str = "15", backup_days: int = 7,
                    tags: list[str] | None = None) -> str:
        cid = str(uuid.uuid4())
        self.clusters[cid] = self._cluster_obj(cid, name, size, num_nodes, region, version,
                                               tags or [], "online")
        now = _now()
        self.backups[cid] = [
            {"created_at": _iso(now - timedelta(days=d, hours=2)),
             "size_gigabytes": 0.042 + d / 1000}
            for d in range(backup_days, 0, -1)
        ]
        self.replicas[cid] = {}
        self.pools[cid] = {}
        return cid

    def fail(self, method: str, path: str, status: int, *, times: int = 1,
             retry_after: str | None = None) -> None:
        """The next ``times`` requests matching method and path regex get ``status``."""
        self.faults.append(Fault(method, re.compile(path), status, times, retry_after))

    def sent(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]

    # ---------------------------------------------------------------- internals
    def _connection(self, database: str, port: int | None = None) -> dict[str, Any]:
        # Like the real API, connection objects carry the default user's password.
        return {"uri": f"postgresql://doadmin:fake-password-xyz@{self.connection_host}:"
                       f"{port or self.connection_port}/{database}?sslmode=require",
                "database": database, "host": self.connection_host,
                "port": port or self.connection_port, "user": "doadmin",
                "password": "fake-password-xyz", "ssl": True}

    def _cluster_obj(self, cid: str, name: str, size: str, num_nodes: int, region: str,
                     version: str, tags: list[str], status: str) -> dict[str, Any]:
        return {
            "id": cid, "name": name, "engine": "pg", "version": version,
            "semantic_version": f"{version}.8", "num_nodes": num_nodes, "size": size,
            "region": region, "status": status, "created_at": _iso(_now()),
            "connection": self._connection("defaultdb"),
            "private_connection": self._connection("defaultdb"),
            "standby_connection": self._connection("defaultdb") if num_nodes > 1 else None,
            "db_names": ["defaultdb"], "tags": tags, "users": [{"name": "doadmin",
                                                                "role": "primary"}],
            "maintenance_window": {"day": "tuesday", "hour": "08:00:00", "pending": False,
                                   "description": []},
            "private_network_uuid": "9423cbad-9211-442f-820b-ef6915e99b5f",
            "project_id": "5c3c1d3e-0000-4000-8000-000000000001",
            "storage_size_mib": 30720,
        }

    def _advance(self, key: tuple[str, ...], obj: dict[str, Any], ready: str = "online") -> None:
        if key in self.pending:
            self.pending[key] -= 1
            if self.pending[key] <= 0:
                del self.pending[key]
                obj["status"] = ready

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"id": ERROR_IDS.get(status, "error"), "message": message,
                             "request_id": str(uuid.uuid4())}, status_code=status,
                            headers=headers)

    def _page(self, request: Request, key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        page = max(1, int(request.query_params.get("page", 1)))
        per_page = min(int(request.query_params.get("per_page", 20)), self.max_per_page)
        chunk = items[(page - 1) * per_page: page * per_page]
        last = max(1, -(-len(items) // per_page))
        base = str(request.url).split("?")[0]
        extra = {k: v for k, v in request.query_params.items() if k not in ("page", "per_page")}

        def link(n: int) -> str:
            return f"{base}?{urlencode({**extra, 'page': n, 'per_page': per_page})}"

        pages: dict[str, str] = {}
        if page < last:
            pages.update(next=link(page + 1), last=link(last))
        if page > 1:
            pages.update(first=link(1), prev=link(page - 1))
        return {key: chunk, "links": {"pages": pages}, "meta": {"total": len(items)}}

    def _build_app(self) -> FastAPI:
        app = FastAPI()
        fake = self

        @app.middleware("http")
        async def record_auth_faults(request: Request, call_next):
            raw = await request.body()
            try:
                import json

                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            rec = Recorded(request.method, request.url.path, dict(request.query_params), body)
            with fake.lock:
                fake.requests.append(rec)
                fault = next((f for f in fake.faults if f.times > 0 and f.method == request.method
                              and f.path.search(request.url.path)), None)
                if fault:
                    fault.times -= 1
            rate = {"ratelimit-limit": "5000", "ratelimit-remaining": "4999",
                    "ratelimit-reset": str(int(time.time()) + 60)}
            if request.headers.get("authorization") != f"Bearer {fake.token}":
                response: Response = fake._error(401, "Unable to authenticate you", rate)
            elif fault:
                headers = dict(rate)
                if fault.retry_after is not None:
                    headers["Retry-After"] = fault.retry_after
                response = fake._error(fault.status, "injected failure", headers)
            else:
                response = await call_next(request)
                response.headers.update(rate)
            rec.status = response.status_code
            return response

        def cluster_or_404(cid: str) -> dict[str, Any] | JSONResponse:
            c = fake.clusters.get(cid)
            return c if c is not None else fake._error(
                404, "The resource you requested could not be found.")

        @app.get("/v2/databases/options")
        async def options():
            layouts = [{"num_nodes": n, "sizes": PG_SIZES if n == 1 else PG_SIZES[1:]}
                       for n in (1, 2, 3)]
            return {"options": {"pg": {"regions": ["ams3", "fra1", "nyc3", "sfo3"],
                                       "versions": ["13", "14", "15", "16"],
                                       "layouts": layouts}},
                    "version_availability": {"pg": [{"version": v, "end_of_life": None,
                                                     "end_of_availability": None}
                                                    for v in ("13", "14", "15", "16")]}}

        @app.get("/v2/databases")
        async def list_clusters(request: Request):
            tag = request.query_params.get("tag_name")
            items = [c for c in fake.clusters.values() if tag is None or tag in c["tags"]]
            return fake._page(request, "databases", sorted(items, key=lambda c: c["name"]))

        @app.post("/v2/databases", status_code=201)
        async def create_cluster(request: Request):
            body = await request.json()
            for key in ("name", "engine", "region", "size", "num_nodes"):
                if key not in body:
                    return fake._error(422, f"{key} is required")
            name = body["name"]
            if not NAME_RE.fullmatch(name):
                return fake._error(422, "name must be 3-63 lowercase letters, digits, hyphens")
            if any(c["name"] == name for c in fake.clusters.values()):
                return fake._error(422, "cluster name is already in use")
            if body["size"] not in PG_SIZES:
                return fake._error(422, f"invalid size {body['size']}")
            restore = body.get("backup_restore")
            if restore:
                src = next((c for c in fake.clusters.values()
                            if c["name"] == restore.get("database_name")), None)
                if src is None:
                    return fake._error(404, "backup_restore: source cluster not found")
                at = restore.get("backup_created_at")
                if at:
                    when = datetime.fromisoformat(at.replace("Z", "+00:00"))
                    oldest = min(datetime.fromisoformat(b["created_at"].replace("Z", "+00:00"))
                                 for b in fake.backups[src["id"]])
                    earliest = max(oldest, _now() - timedelta(days=7))
                    if when < earliest or when > _now() + timedelta(seconds=5):
                        return fake._error(422, "backup_created_at is outside the recovery window")
                if PG_SIZES.index(body["size"]) < PG_SIZES.index(src["size"]):
                    return fake._error(422, "a fork's size must be equal to or larger than "
                                            "the source")
            cid = str(uuid.uuid4())
            obj = fake._cluster_obj(cid, name, body["size"], body["num_nodes"], body["region"],
                                    str(body.get("version") or "15"), body.get("tags") or [],
                                    "creating")
            fake.clusters[cid] = obj
            fake.backups[cid], fake.replicas[cid], fake.pools[cid] = [], {}, {}
            fake.pending[("cluster", cid)] = fake.polls_until_online
            return JSONResponse({"database": obj}, status_code=201)

        @app.get("/v2/databases/{cid}")
        async def get_cluster(cid: str):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            fake._advance(("cluster", cid), c)
            return {"database": c}

        @app.delete("/v2/databases/{cid}")
        async def destroy_cluster(cid: str):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            del fake.clusters[cid]
            return Response(status_code=204)

        @app.put("/v2/databases/{cid}/resize")
        async def resize(cid: str, request: Request):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            body = await request.json()
            if "size" not in body or "num_nodes" not in body:
                return fake._error(422, "size and num_nodes are required")
            if body["size"] not in PG_SIZES:
                return fake._error(422, f"invalid size {body['size']}")
            if PG_SIZES.index(body["size"]) < PG_SIZES.index(c["size"]):
                return fake._error(422, "cannot resize to a smaller size")
            c.update(size=body["size"], num_nodes=body["num_nodes"], status="resizing")
            fake.pending[("cluster", cid)] = fake.polls_until_online
            return Response(status_code=202)

        @app.get("/v2/databases/{cid}/backups")
        async def list_backups(cid: str):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            return {"backups": fake.backups[cid],
                    "scheduled_backup_time": {"backup_hour": 20, "backup_minute": 40,
                                              "backup_interval_hours": 24}}

        @app.get("/v2/databases/{cid}/replicas")
        async def list_replicas(cid: str, request: Request):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            return fake._page(request, "replicas", list(fake.replicas[cid].values()))

        @app.post("/v2/databases/{cid}/replicas", status_code=201)
        async def create_replica(cid: str, request: Request):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            body = await request.json()
            name = body.get("name", "")
            if not NAME_RE.fullmatch(name) or "size" not in body:
                return fake._error(422, "name (3-63 lowercase) and size are required")
            if name in fake.replicas[cid]:
                return fake._error(422, "replica name is already in use")
            if (body["size"] not in PG_SIZES
                    or PG_SIZES.index(body["size"]) < PG_SIZES.index(c["size"])):
                return fake._error(422, "replica size must be at least the cluster's node size")
            obj = {"id": str(uuid.uuid4()), "name": name, "region": body.get("region", c["region"]),
                   "size": body["size"], "status": "forking", "created_at": _iso(_now()),
                   "connection": fake._connection("defaultdb"),
                   "private_connection": fake._connection("defaultdb"), "tags": []}
            fake.replicas[cid][name] = obj
            fake.pending[("replica", cid, name)] = fake.polls_until_online
            return JSONResponse({"replica": obj}, status_code=201)

        @app.get("/v2/databases/{cid}/replicas/{name}")
        async def get_replica(cid: str, name: str):
            r = fake.replicas.get(cid, {}).get(name)
            if r is None:
                return fake._error(404, "The resource you requested could not be found.")
            fake._advance(("replica", cid, name), r)
            return {"replica": r}

        @app.delete("/v2/databases/{cid}/replicas/{name}")
        async def destroy_replica(cid: str, name: str):
            if fake.replicas.get(cid, {}).pop(name, None) is None:
                return fake._error(404, "The resource you requested could not be found.")
            return Response(status_code=204)

        @app.get("/v2/databases/{cid}/pools")
        async def list_pools(cid: str, request: Request):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            return fake._page(request, "pools", list(fake.pools[cid].values()))

        @app.post("/v2/databases/{cid}/pools", status_code=201)
        async def add_pool(cid: str, request: Request):
            c = cluster_or_404(cid)
            if isinstance(c, JSONResponse):
                return c
            body = await request.json()
            for key in ("name", "mode", "size", "db"):
                if key not in body:
                    return fake._error(422, f"{key} is required")
            if not 3 <= len(body["name"]) <= 60:
                return fake._error(422, "name must be between 3 and 60 characters")
            if body["mode"] not in ("session", "transaction", "statement"):
                return fake._error(422, "mode must be session, transaction or statement")
            gb = int(re.search(r"(\d+)gb", c["size"])[1])
            used = sum(p["size"] for p in fake.pools[cid].values())
            if used + body["size"] > 25 * gb - 3:
                return fake._error(422, f"pool size exceeds the cluster's {25 * gb - 3} "
                                        "backend connections")
            if body["name"] in fake.pools[cid]:
                return fake._error(422, "pool name is already in use")
            obj = {"name": body["name"], "mode": body["mode"], "size": body["size"],
                   "db": body["db"], "user": body.get("user", ""),
                   "connection": fake._connection(body["name"], fake.connection_port + 1)}
            fake.pools[cid][body["name"]] = obj
            return JSONResponse({"pool": obj}, status_code=201)

        @app.get("/v2/databases/{cid}/pools/{name}")
        async def get_pool(cid: str, name: str):
            p = fake.pools.get(cid, {}).get(name)
            if p is None:
                return fake._error(404, "The resource you requested could not be found.")
            return {"pool": p}

        @app.delete("/v2/databases/{cid}/pools/{name}")
        async def delete_pool(cid: str, name: str):
            if fake.pools.get(cid, {}).pop(name, None) is None:
                return fake._error(404, "The resource you requested could not be found.")
            return Response(status_code=204)

        return app


@dataclass
class TlsServer:
    url: str
    ca_file: Path
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.force_exit = True  # not waiting for clients' idle keep-alive connections
        self.thread.join(timeout=10)


def serve_tls(fake: FakeDigitalOcean, directory: Path) -> TlsServer:
    """Serve ``fake`` over HTTPS on 127.0.0.1 with a certificate from a throwaway CA; the CA's
    PEM is written to ``directory/ca.pem`` for the client to trust."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_file, cert_file, ca_file = (directory / n for n in ("key.pem", "cert.pem", "ca.pem"))
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.cert_pem.write_to_path(str(ca_file))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(fake.app, ssl_keyfile=str(key_file), ssl_certfile=str(cert_file),
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the fake DigitalOcean API did not start")
        time.sleep(0.02)
    return TlsServer(f"https://127.0.0.1:{port}", ca_file, server, thread)
