"""``studyhub cluster`` on DigitalOcean managed PostgreSQL: what each command reads and the API
requests each change sends (``DigitalOceanBackend``), on top of ``digitalocean_api``'s client
(token, bounded retries, errors); promoting a fork is in ``digitalocean_promote``. Endpoints
used are listed in docs/cluster.md.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from studyhub.ops.cluster.common import (
    erasure_plan_line,
    fork_profile,
    reapply_erasures_on_fork,
    streaming_clients,
    verify_profile,
)
from studyhub.ops.cluster.digitalocean_api import FORK_TAG, _conn, _ts
from studyhub.ops.cluster.digitalocean_promote import DigitalOceanPromote
from studyhub.ops.cluster.profile_file import recorded_values
from studyhub.ops.cluster.types import (
    ApiRequest,
    Backup,
    Backups,
    ChangeResult,
    ClusterInfo,
    ClusterOpError,
    Fork,
    ForkErasures,
    ForkResult,
    Node,
    Plan,
    Pool,
    Progress,
    RecoveryWindow,
    Replica,
    _noop,
    check_name,
    check_pool,
    iso,
    refuse_outside,
)

PITR_DAYS = 7  # DigitalOcean keeps backups and WAL for point-in-time recovery this long
PRICING_URL = "https://www.digitalocean.com/pricing/managed-databases"
DOWNTIME_NOTE = ("expect a brief interruption: DigitalOcean moves the cluster to new nodes and "
                 "drops open connections; clients must reconnect")
_SLUG_RE = re.compile(r"(\d+)vcpu-(\d+)gb")


def describe_size(slug: str) -> str:
    m = _SLUG_RE.search(slug)
    return f"{m[1]} vCPU, {m[2]} GB RAM" if m else slug


class DigitalOceanBackend(DigitalOceanPromote):
    provider = "digitalocean"

    # ------------------------------------------------------------------- reads
    def _backups_window(self, backups: list[dict[str, Any]]) -> RecoveryWindow:
        now = datetime.now(timezone.utc)
        if not backups:
            return RecoveryWindow(None, None, "DigitalOcean lists no backup yet")
        oldest = min(_ts(b["created_at"]) for b in backups)
        return RecoveryWindow(max(oldest, now - timedelta(days=PITR_DAYS)), now,
                              f"DigitalOcean point-in-time recovery: the last {PITR_DAYS} days, "
                              f"from the oldest retained backup")

    def _raw_backups(self) -> dict[str, Any]:
        return self._call("list_backups", self.cluster_id, what="listing backups")

    def backups(self) -> Backups:
        body = self._raw_backups()
        raw = body.get("backups") or []
        sched = body.get("scheduled_backup_time") or {}
        schedule = None
        if sched:
            schedule = (f"daily at {sched.get('backup_hour', 0):02d}:"
                        f"{sched.get('backup_minute', 0):02d} UTC"
                        + (f", every {sched['backup_interval_hours']} h"
                           if sched.get("backup_interval_hours") else ""))
        backups = [Backup(created_at=_ts(b["created_at"]), kind="daily",
                          size_bytes=round(float(b.get("size_gigabytes") or 0) * 10**9))
                   for b in raw]
        backups.sort(key=lambda b: b.created_at, reverse=True)
        return Backups("digitalocean", self.cluster_id, backups, self._backups_window(raw),
                       schedule=schedule,
                       in_progress=f"{body['backup_progress']}%" if body.get("backup_progress")
                       else None)

    def _replica(self, r: dict[str, Any]) -> Replica:
        host, port = _conn(r.get("connection"))
        return Replica(r["name"], r.get("status", "?"), host, port, r.get("size"),
                       r.get("region"), _ts(r.get("created_at")))

    def replicas(self) -> list[Replica]:
        return [self._replica(r) for r in self._list(
            "list_replicas", "replicas", self.cluster_id, what="listing replicas")]

    def _pool(self, p: dict[str, Any]) -> Pool:
        host, port = _conn(p.get("connection"))
        return Pool(p["name"], p["db"], p.get("user") or None, p["mode"], p["size"], host, port)

    def pools(self) -> list[Pool]:
        return [self._pool(p) for p in self._list(
            "list_connection_pools", "pools", self.cluster_id, what="listing connection pools")]

    def _fork(self, db: dict[str, Any]) -> Fork:
        host, port = _conn(db.get("connection"))
        at = next((t[len("studyhub-at-"):] for t in db.get("tags") or []
                   if t.startswith("studyhub-at-")), None)
        return Fork(
            name=db["name"], provider="digitalocean", status=db.get("status", "?"),
            target_time=(datetime.strptime(at, "%Y%m%dt%H%M%Sz").replace(tzinfo=timezone.utc)
                         if at else None),
            host=host, port=port, database=self.profile.database,
            url=self._endpoint_url(host, port), created_at=_ts(db.get("created_at")),
            id=db.get("id"), size=db.get("size"), region=db.get("region"),
        )

    def forks(self) -> list[Fork]:
        return [self._fork(db) for db in self._list(
            "list_clusters", "databases", what="listing forks", tag_name=FORK_TAG)]

    def info(self) -> ClusterInfo:
        db = self._cluster()
        host, port = _conn(db.get("connection"))
        nodes = [Node("primary", db["name"], host, port, db.get("status", "?"), db.get("size"))]
        standby_host, standby_port = _conn(db.get("standby_connection"))
        for i in range(max(0, (db.get("num_nodes") or 1) - 1)):
            nodes.append(Node("standby", f"standby-{i + 1}", standby_host, standby_port,
                              db.get("status", "?"), "high-availability standby (no reads)"))
        pools = self.pools()
        if pools:
            nodes.append(Node("pooler", "pgbouncer", pools[0].host, pools[0].port, "online",
                              f"{len(pools)} pool(s)"))
        backups = self.backups()
        notes = []
        streaming, problem = streaming_clients(self.profile)
        if problem:
            notes.append(problem)
        mw = db.get("maintenance_window") or {}
        window = f"{mw['day']} {mw['hour']} UTC" if mw.get("day") else None
        if mw.get("description"):
            notes += [f"pending maintenance: {d}" for d in mw["description"]]
        return ClusterInfo(
            provider="digitalocean", name=db["name"], id=db.get("id"),
            status=db.get("status", "?"), version=db.get("version"), size=db.get("size"),
            num_nodes=db.get("num_nodes"), region=db.get("region"), nodes=nodes,
            replicas=self.replicas(), pools=pools, streaming=streaming,
            maintenance_window=window, maintenance_pending=mw.get("pending"),
            latest_backup_at=backups.backups[0].created_at if backups.backups else None,
            backups_count=len(backups.backups), window=backups.window, forks=self.forks(),
            notes=notes,
        )

    # ------------------------------------------------------------------- forks
    def fork_plan(self, at: datetime, name: str, *, offline: bool = False,
                  reapply_erasures: bool = True) -> Plan:
        check_name(name, "fork")
        at_text = iso(at)
        tags = [FORK_TAG, "studyhub-at-" + at.strftime("%Y%m%dt%H%M%Sz")]
        if offline:
            body = {"name": name, "engine": "pg", "version": "<source version>",
                    "region": "<source region>", "size": "<source size>",
                    "num_nodes": "<source num_nodes>", "tags": tags,
                    "backup_restore": {"database_name": "<source name>",
                                       "backup_created_at": at_text}}
            summary = [f"create cluster {name} from cluster {self.cluster_id} as of {at_text}",
                       "values in <…> are read from the source cluster when run",
                       erasure_plan_line(reapply_erasures)]
        else:
            db = self._cluster()
            refuse_outside(self._backups_window(self._raw_backups().get("backups") or []), at)
            body = {"name": name, "engine": db.get("engine", "pg"), "version": db.get("version"),
                    "region": db["region"], "size": db["size"], "num_nodes": db["num_nodes"],
                    "tags": tags,
                    "backup_restore": {"database_name": db["name"], "backup_created_at": at_text}}
            for key in ("private_network_uuid", "project_id"):
                if db.get(key):
                    body[key] = db[key]
            summary = [
                f"create cluster {name} from {db['name']} as of {at_text} "
                f"(PostgreSQL {db.get('version')}, {db['size']} = {describe_size(db['size'])}, "
                f"{db['num_nodes']} node(s), {db['region']})",
                "a new cluster is billed like any other until removed "
                f"(studyhub cluster forks remove {name}); prices: {PRICING_URL}",
                "wait until it is online, then verify row counts and newest timestamps",
                erasure_plan_line(reapply_erasures),
            ]
        requests = [ApiRequest("GET", self.base), ApiRequest("GET", f"{self.base}/backups"),
                    ApiRequest("POST", "/v2/databases", body),
                    ApiRequest("GET", "/v2/databases/<new id>")]
        return Plan("digitalocean", "fork", self.cluster_id, summary,
                    params={"name": name, "at": at.isoformat(), "body": body,
                            "reapply_erasures": reapply_erasures},
                    requests=requests, offline=offline)

    def fork(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
             poll_interval_s: float = 10) -> ForkResult:
        assert not plan.offline
        started = time.monotonic()
        name = plan.params["name"]
        created = self._call("create_cluster", plan.params["body"], method="POST",
                             what=f"creating the fork {name}")["database"]
        new_id = created["id"]
        progress(f"{name}: {created.get('status', 'creating')}")
        state: dict[str, Any] = {}

        def fetch() -> str:
            state["db"] = self._call("get_cluster", new_id, what=f"reading the fork {name}")[
                "database"]
            return state["db"].get("status", "?")

        self._wait(f"fork {name}", fetch, ("online",), progress, timeout_s, poll_interval_s)
        fork = self._fork(state["db"])
        verification = None
        target = fork_profile(self.profile, f"fork {name}", fork.host, fork.port) \
            if fork.host and fork.port else None
        if target is not None:
            progress("verifying the fork")
            verification = verify_profile(target)
        erasures = ForkErasures("skipped")
        if plan.params.get("reapply_erasures", True):
            if target is None:
                raise ClusterOpError(
                    f"fork {name} is online but the API gave no host and port for it, so the "
                    f"erasure ledger was not re-applied; it may hold people erased after its "
                    f"point in time: remove it (studyhub cluster forks remove {name}) or "
                    f"re-apply once it is reachable (studyhub privacy reapply-erasures --fork "
                    f"{name} --profile {self.profile.name})")
            progress("re-applying the erasure ledger to the fork")
            erasures = reapply_erasures_on_fork(self.profile, target, name)
        return ForkResult(fork, None, None, round(time.monotonic() - started, 3), verification,
                          erasures)

    def fork_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        requests = [ApiRequest("GET", f"/v2/databases?tag_name={FORK_TAG}")]
        if offline:
            requests.append(ApiRequest("DELETE", f"/v2/databases/<id of {name}>"))
            return Plan("digitalocean", "fork remove", self.cluster_id,
                        [f"destroy the cluster {name} (only if tagged {FORK_TAG})"],
                        params={"name": name}, requests=requests, offline=True)
        match = [f for f in self.forks() if f.name == name]
        if not match:
            raise ClusterOpError(f"no fork named {name!r} among the clusters tagged {FORK_TAG}; "
                                 f"only forks made by studyhub can be removed here")
        fork = match[0]
        if fork.id in (self.cluster_id, recorded_values(self.profile.name).get("do_cluster_id")):
            raise ClusterOpError("refusing to destroy the profile's own cluster (a promoted fork "
                                 "is the profile's primary)")
        requests.append(ApiRequest("DELETE", f"/v2/databases/{fork.id}"))
        return Plan("digitalocean", "fork remove", self.cluster_id,
                    [f"destroy the cluster {name} ({fork.id}, {fork.size}, {fork.region}) and "
                     "all its data; billing stops"],
                    params={"name": name, "id": fork.id}, requests=requests)

    def fork_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        self._call("destroy_cluster", plan.params["id"], method="DELETE",
                   what=f"destroying the fork {plan.params['name']}")
        return ChangeResult("digitalocean", "fork remove", self.cluster_id, plan.params["name"],
                            "destroyed", round(time.monotonic() - started, 3))

    def fork_stop(self, name: str) -> Fork:
        raise ClusterOpError("DigitalOcean clusters cannot be stopped; remove the fork when done")

    fork_start = fork_stop

    def basebackup_plan(self, keep: int | None = None, *, offline: bool = False) -> Plan:
        raise ClusterOpError("DigitalOcean takes its own daily backups (and keeps WAL for "
                             "point-in-time recovery); list them with: studyhub cluster backups")

    # ----------------------------------------------------------------- replicas
    def replica_add_plan(self, name: str | None, size: str | None, region: str | None, *,
                         offline: bool = False) -> Plan:
        if not name:
            raise ClusterOpError("a DigitalOcean replica needs a name: --name read-nyc3-01")
        check_name(name, "replica")
        requests = [ApiRequest("GET", self.base), ApiRequest("GET", f"{self.base}/replicas")]
        if offline:
            body = {"name": name, "size": size or "<cluster size>",
                    "region": region or "<cluster region>"}
            summary = [f"create read-only replica {name}"]
        else:
            db = self._cluster()
            if any(r.name == name for r in self.replicas()):
                raise ClusterOpError(f"a replica named {name!r} exists (cluster replica list)")
            body = {"name": name, "size": size or db["size"], "region": region or db["region"]}
            summary = [
                f"create read-only replica {name} of {db['name']}: {body['size']} "
                f"({describe_size(body['size'])}) in {body['region']}",
                f"billed like a node of that size until removed; prices: {PRICING_URL}",
                "wait until it is online (DigitalOcean copies the data first)",
            ]
        requests += [ApiRequest("POST", f"{self.base}/replicas", body),
                     ApiRequest("GET", f"{self.base}/replicas/{name}")]
        return Plan("digitalocean", "replica add", self.cluster_id, summary,
                    params={"name": name, "body": body}, requests=requests, offline=offline)

    def replica_add(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
                    poll_interval_s: float = 10) -> Replica:
        assert not plan.offline
        name = plan.params["name"]
        self._call("create_replica", self.cluster_id, plan.params["body"], method="POST",
                   what=f"creating the replica {name}")
        state: dict[str, Any] = {}

        def fetch() -> str:
            state["r"] = self._call("get_replica", self.cluster_id, name,
                                    what=f"reading the replica {name}")["replica"]
            return state["r"].get("status", "?")

        self._wait(f"replica {name}", fetch, ("online", "active"), progress, timeout_s,
                   poll_interval_s)
        return self._replica(state["r"])

    def replica_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        path = f"{self.base}/replicas/{name}"
        if offline:
            return Plan("digitalocean", "replica remove", self.cluster_id,
                        [f"destroy read-only replica {name}"], params={"name": name},
                        requests=[ApiRequest("GET", path), ApiRequest("DELETE", path)],
                        offline=True)
        known = self.replicas()
        match = [r for r in known if r.name == name]
        if not match:
            names = ", ".join(r.name for r in known) or "none"
            raise ClusterOpError(f"no replica named {name!r} (replicas: {names})")
        return Plan("digitalocean", "replica remove", self.cluster_id,
                    [f"destroy read-only replica {name} ({match[0].host}); connections to it "
                     "drop, readers must fall back to the primary"],
                    params={"name": name},
                    requests=[ApiRequest("GET", f"{self.base}/replicas"),
                              ApiRequest("DELETE", path)])

    def replica_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        name = plan.params["name"]
        self._call("destroy_replica", self.cluster_id, name, method="DELETE",
                   what=f"destroying the replica {name}")
        return ChangeResult("digitalocean", "replica remove", self.cluster_id, name, "destroyed",
                            round(time.monotonic() - started, 3))

    # ------------------------------------------------------------------- resize
    def resize_plan(self, size: str, num_nodes: int | None, *, offline: bool = False) -> Plan:
        requests = [ApiRequest("GET", self.base), ApiRequest("GET", "/v2/databases/options")]
        if num_nodes is not None and not 1 <= num_nodes <= 3:
            raise ClusterOpError(f"--nodes must be 1, 2 or 3 (got {num_nodes})")
        if offline:
            body: dict[str, Any] = {"size": size, "num_nodes": num_nodes or "<current num_nodes>"}
            summary = [f"resize cluster {self.cluster_id} to {size} ({describe_size(size)})",
                       DOWNTIME_NOTE]
            params = {"body": body}
        else:
            db = self._cluster()
            nodes = num_nodes or db["num_nodes"]
            options = self._call("list_options", what="reading the size options")
            layouts = ((options.get("options") or {}).get("pg") or {}).get("layouts") or []
            sizes = next((lay.get("sizes") or [] for lay in layouts
                          if lay.get("num_nodes") == nodes), [])
            if size not in sizes:
                raise ClusterOpError(
                    f"size {size!r} is not offered for {nodes}-node PostgreSQL clusters; choose "
                    f"one of: {', '.join(sizes) or 'none listed'}"
                )
            current = db["size"]
            if current in sizes and sizes.index(size) < sizes.index(current):
                raise ClusterOpError(
                    f"DigitalOcean cannot resize to smaller nodes ({current} → {size}); create a "
                    "new cluster of that size and move the data instead"
                )
            if size == current and nodes == db["num_nodes"]:
                raise ClusterOpError(f"the cluster already is {size} with {nodes} node(s)")
            body = {"size": size, "num_nodes": nodes}
            summary = [
                f"size: {current} ({describe_size(current)}) → {size} ({describe_size(size)})",
                f"nodes: {db['num_nodes']} → {nodes}",
                f"price: the API does not give one; see {PRICING_URL}",
                DOWNTIME_NOTE,
            ]
            params = {"body": body, "from_size": current, "from_nodes": db["num_nodes"]}
        requests += [ApiRequest("PUT", f"{self.base}/resize", body),
                     ApiRequest("GET", self.base)]
        return Plan("digitalocean", "resize", self.cluster_id, summary, params=params,
                    requests=requests, offline=offline)

    def resize(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
               poll_interval_s: float = 10) -> ChangeResult:
        assert not plan.offline
        started = time.monotonic()
        self._call("update_cluster_size", self.cluster_id, plan.params["body"], method="PUT",
                   what="resizing the cluster")
        status = self._wait("resize", lambda: self._cluster().get("status", "?"), ("online",),
                            progress, timeout_s, poll_interval_s)
        return ChangeResult("digitalocean", "resize", self.cluster_id, plan.params["body"]["size"],
                            status, round(time.monotonic() - started, 3),
                            details={"from_size": plan.params.get("from_size"),
                                     "to_size": plan.params["body"]["size"],
                                     "from_nodes": plan.params.get("from_nodes"),
                                     "to_nodes": plan.params["body"]["num_nodes"]})

    # -------------------------------------------------------------------- pools
    def pool_add_plan(self, name: str, database: str | None, user: str | None, mode: str,
                      size: int, *, offline: bool = False) -> Plan:
        check_pool(name, mode, size)
        body: dict[str, Any] = {"name": name, "mode": mode, "size": size,
                                "db": database or self.profile.database}
        if user:
            body["user"] = user
        if not offline and any(p.name == name for p in self.pools()):
            raise ClusterOpError(f"a pool named {name!r} exists (cluster pool list)")
        return Plan(
            "digitalocean", "pool add", self.cluster_id,
            [f"connection pool {name} → database {body['db']}"
             f"{' as ' + user if user else ''}, {mode} mode, {size} server connections "
             "(on the pooler port; sizes share the cluster's connection limit)"],
            params={"name": name, "body": body},
            requests=[ApiRequest("GET", f"{self.base}/pools"),
                      ApiRequest("POST", f"{self.base}/pools", body)],
            offline=offline)

    def pool_add(self, plan: Plan) -> Pool:
        assert not plan.offline
        body = self._call("add_connection_pool", self.cluster_id, plan.params["body"],
                          method="POST", what=f"creating the pool {plan.params['name']}")
        return self._pool(body["pool"])

    def pool_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        path = f"{self.base}/pools/{name}"
        if not offline:
            known = self.pools()
            if not any(p.name == name for p in known):
                names = ", ".join(p.name for p in known) or "none"
                raise ClusterOpError(f"no pool named {name!r} (pools: {names})")
        return Plan("digitalocean", "pool remove", self.cluster_id,
                    [f"delete connection pool {name}; clients connected through it are cut off"],
                    params={"name": name},
                    requests=[ApiRequest("GET", f"{self.base}/pools"), ApiRequest("DELETE", path)],
                    offline=offline)

    def pool_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        name = plan.params["name"]
        self._call("delete_connection_pool", self.cluster_id, name, method="DELETE",
                   what=f"deleting the pool {name}")
        return ChangeResult("digitalocean", "pool remove", self.cluster_id, name, "deleted",
                            round(time.monotonic() - started, 3))
