"""``studyhub cluster`` on the local embedded cluster, with PostgreSQL's own machinery.

``LocalBackend`` is built in layers: ``local_archive`` (base backups, the WAL archive and the
recoverable window), ``local_forks`` (point-in-time forks made from them), and this module: the
read replicas ("replica", "replica2" …, each streaming through its own slot), resize (not applicable
locally), pools (PgBouncer ``[databases]`` entries, the local counterpart of DigitalOcean's
connection pools) and ``info``.
"""

from __future__ import annotations

import time
from typing import Any

from studyhub.connect import ConnectError, connect
from studyhub.errors import LocalClusterError
from studyhub.local import APP_DATABASE, APP_ROLE, OPS_ROLE, replica_slot
from studyhub.ops.cluster.common import streaming_clients
from studyhub.ops.cluster.local_forks import LocalForks
from studyhub.ops.cluster.types import (
    ChangeResult,
    ClusterInfo,
    ClusterOpError,
    Node,
    Plan,
    Pool,
    Progress,
    Replica,
    _noop,
    check_pool,
)
from studyhub.ops.queries import load


class LocalBackend(LocalForks):
    """The local cluster (``$STUDYHUB_HOME``) as a cluster provider."""

    # ----------------------------------------------------------------- replicas
    def replicas(self) -> list[Replica]:
        st = self.cluster.status()
        if not st.replicas:
            return []
        lags: dict[str, float | None] = {}
        if st.primary.running:
            clients, _ = streaming_clients(self.profile)
            lags = {s.application_name: s.replay_lag_s for s in clients}
        found = []
        for r in st.replicas:
            status = ("streaming" if r.streaming else "running, not streaming") \
                if r.running else "stopped"
            found.append(Replica(r.name, status, "127.0.0.1", r.port, lag_bytes=r.lag_bytes,
                                 replay_lag_s=lags.get(replica_slot(r.name))))
        return found

    def replica_add_plan(self, name: str | None, size: str | None, region: str | None, *,
                         offline: bool = False) -> Plan:
        state = self.cluster.load_state()
        chosen = name or state.next_replica_name()
        try:
            self.cluster.check_new_replica_name(chosen, state)
        except LocalClusterError as exc:
            raise ClusterOpError(str(exc)) from None
        self._require_primary("adding a replica")
        warnings = [f"--{k} applies to DigitalOcean only; ignored locally"
                    for k, v in (("size", size), ("region", region)) if v]
        return Plan("local", "replica add", "local",
                    [f"pg_basebackup of the primary through the slot {replica_slot(chosen)}",
                     f"start it as the hot standby {chosen} on a free port and wait until it "
                     "streams; the local profile lists it"],
                    params={"name": chosen}, warnings=warnings)

    def replica_add(self, plan: Plan, *, progress: Progress = _noop, timeout_s: float = 3600,
                    poll_interval_s: float = 10) -> Replica:
        name = plan.params["name"]
        try:
            self.cluster.add_replica(name, progress=progress)
        except LocalClusterError as exc:
            raise ClusterOpError(str(exc)) from None
        return next(r for r in self.replicas() if r.name == name)

    def replica_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        names = self.cluster.load_state().replica_names()
        if name not in names:
            raise ClusterOpError(f"no replica named {name!r} (replicas: "
                                 f"{', '.join(names) or 'none'})")
        return Plan("local", "replica remove", "local",
                    [f"stop the replica {name} and delete {self.cluster.replica_node_dir(name)}",
                     f"drop its replication slot {replica_slot(name)} on the primary; the local "
                     "profile no longer lists it"], params={"name": name})

    def replica_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        name = plan.params["name"]
        self.cluster.remove_replica(name)
        return ChangeResult("local", "replica remove", "local", name, "removed",
                            round(time.monotonic() - started, 3))

    # -------------------------------------------------------------------- resize
    def resize_plan(self, size: str, num_nodes: int | None, *, offline: bool = False) -> Plan:
        raise ClusterOpError(
            "resize does not apply to the local cluster: it has no node sizes (it runs on this "
            "machine with the settings in studyhub.conf); rehearse the DigitalOcean resize with "
            "--profile staging --dry-run"
        )

    def resize(self, plan: Plan, **_: Any) -> ChangeResult:  # pragma: no cover - never planned
        raise AssertionError("unreachable")

    # --------------------------------------------------------------------- pools
    def _pools_state(self) -> dict[str, dict[str, Any]]:
        return dict(self.cluster.load_state().extra.get("pools", {}))

    def pools(self) -> list[Pool]:
        port = self.cluster.load_state().pooler_port
        return [Pool(name, p["database"], p.get("user"), p["mode"], p["size"], "127.0.0.1", port)
                for name, p in sorted(self._pools_state().items())]

    def pool_add_plan(self, name: str, database: str | None, user: str | None, mode: str,
                      size: int, *, offline: bool = False) -> Plan:
        check_pool(name, mode, size)
        state = self.cluster.load_state()
        if not state.has_pooler:
            raise ClusterOpError("the local cluster has no PgBouncer; start it: "
                                 "studyhub local up --pooler")
        pools = self._pools_state()
        if name in pools:
            raise ClusterOpError(f"a pool named {name!r} exists (cluster pool list)")
        if user not in (None, APP_ROLE, OPS_ROLE):
            raise ClusterOpError(
                f"unknown pool user {user!r}; locally one of {APP_ROLE}, {OPS_ROLE} "
                f"(or none: clients connect as themselves)"
            )
        database = database or APP_DATABASE
        self._require_primary("adding a pool")
        with self._ops() as conn:
            if not conn.execute(load("get_databases_like"), {"names": [database]}).fetchone():
                raise ClusterOpError(f"no database named {database!r} on the local primary")
            max_conn = int(conn.execute("SHOW max_connections").fetchone()[0])
            reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
        limit = max_conn - reserved
        used = sum(p["size"] for p in pools.values())
        if used + size > limit:
            raise ClusterOpError(
                f"pools would hold {used + size} server connections; the primary allows "
                f"{limit} (max_connections {max_conn} - {reserved} reserved), {used} already pooled"
            )
        return Plan("local", "pool add", "local",
                    [f"PgBouncer [databases] entry {name} → database {database}"
                     f"{' as ' + user if user else ''}, {mode} mode, {size} server connections",
                     f"reload PgBouncer (port {state.pooler_port}); clients connect with "
                     f"dbname={name}"],
                    params={"name": name, "database": database, "user": user, "mode": mode,
                            "size": size})

    def pool_add(self, plan: Plan) -> Pool:
        p = plan.params
        state = self.cluster.load_state()
        state.extra.setdefault("pools", {})[p["name"]] = {
            k: p[k] for k in ("database", "user", "mode", "size")}
        self.cluster.save_state(state)
        self.cluster.reload_pooler()
        return next(x for x in self.pools() if x.name == p["name"])

    def pool_remove_plan(self, name: str, *, offline: bool = False) -> Plan:
        if name not in self._pools_state():
            known = ", ".join(sorted(self._pools_state())) or "none"
            raise ClusterOpError(f"no pool named {name!r} (pools: {known})")
        return Plan("local", "pool remove", "local",
                    [f"remove PgBouncer entry {name} and reload; its clients are disconnected"],
                    params={"name": name})

    def pool_remove(self, plan: Plan) -> ChangeResult:
        started = time.monotonic()
        state = self.cluster.load_state()
        state.extra.get("pools", {}).pop(plan.params["name"], None)
        self.cluster.save_state(state)
        self.cluster.reload_pooler()
        return ChangeResult("local", "pool remove", "local", plan.params["name"], "removed",
                            round(time.monotonic() - started, 3))

    # ---------------------------------------------------------------------- info
    def info(self) -> ClusterInfo:
        st = self.cluster.status()
        nodes = [Node("primary", "primary", "127.0.0.1", st.primary.port,
                      "running" if st.primary.running else "stopped", st.primary.detail)]
        for r in st.replicas:
            nodes.append(Node("replica", r.name, "127.0.0.1", r.port,
                              "running" if r.running else "stopped"))
        if st.pooler:
            nodes.append(Node("pooler", "pgbouncer", "127.0.0.1", st.pooler.port,
                              "running" if st.pooler.running else "stopped",
                              "transaction pooling"))
        notes: list[str] = []
        streaming = []
        if st.primary.running:
            streaming, problem = streaming_clients(self.profile)
            if problem:
                notes.append(problem)
        backups = self.backups()
        if backups.wal_archive and backups.wal_archive.archiver_failed_count:
            notes.append(f"WAL archiving failed {backups.wal_archive.archiver_failed_count} "
                         f"time(s); last failure {backups.wal_archive.last_failed_wal}")
        size = None
        if st.primary.running:
            try:
                with connect(self.profile, "ops", application_name="studyhub cluster info") as conn:
                    size = "shared_buffers {}, max_connections {}".format(
                        *conn.execute("SELECT current_setting('shared_buffers'), "
                                      "current_setting('max_connections')").fetchone())
            except ConnectError as exc:
                notes.append(str(exc))
        return ClusterInfo(
            provider="local",
            name="local",
            id=None,
            status="running" if st.primary.running else "stopped",
            version=st.server_version,
            size=size,
            num_nodes=1,
            region=None,
            nodes=nodes,
            replicas=self.replicas(),
            pools=self.pools(),
            streaming=streaming,
            maintenance_window=None,
            maintenance_pending=None,
            latest_backup_at=backups.backups[0].finished_at if backups.backups else None,
            backups_count=len(backups.backups),
            window=backups.window,
            forks=self.forks(),
            notes=notes,
        )
