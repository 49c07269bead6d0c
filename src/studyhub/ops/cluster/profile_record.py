"""What a change to the cluster's shape tells the profile: ``cluster replica add|remove`` and
``cluster pool add|remove`` record the read endpoints and the pooler in the profile file the
commands own (``$STUDYHUB_HOME/profiles.d/<profile>.toml``, ``studyhub.profile_files``), so the
app and every command use them without a config edit.

The local profile needs no file: it is read from the local cluster's state, which the local
backend updates itself. A profile file someone else edited is refused (with the diff) before
anything is sent to the cluster (``check_profile_file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studyhub.errors import RefusedError
from studyhub.ops.cluster.types import ClusterBackend, Plan, Pool, Replica
from studyhub.profile_files import edited_by_someone_else, profile_file, update_profile_file
from studyhub.profiles import Profile

# the changes whose result is recorded in the profile file
RECORDED_ACTIONS = ("replica add", "replica remove", "pool add", "pool remove")


def check_profile_file(profile: Profile) -> None:
    """Refuse (RefusedError with the diff; nothing done) when the profile's file under
    profiles.d was edited or made by someone else: the change could not be recorded."""
    if profile.is_local:
        return
    diff = edited_by_someone_else(profile.name)
    if diff is not None:
        path = profile_file(profile.name)
        raise RefusedError(
            f"{path} was edited by someone else; studyhub records the cluster's replicas and "
            f"pooler there, so nothing was changed (put your settings in studyhub.toml, then "
            f"delete {path} or restore it; the edit is shown below):\n{diff.rstrip()}")


def _replicas(values: dict[str, Any], profile: Profile) -> list[dict[str, Any]]:
    """The file's replica list, or (first time) the profile's current read endpoints."""
    if "replicas" in values:
        return [dict(r) for r in values["replicas"]]
    return [r.describe() for r in profile.replicas]


def record_change(backend: ClusterBackend, plan: Plan, result: Any) -> Path | None:
    """Record what ``plan`` changed (its ``result``) in the profile file; the path written, or
    None (the local profile, or an action that changes no endpoint)."""
    profile = backend.profile
    if profile.is_local or plan.action not in RECORDED_ACTIONS:
        return None

    def change(values: dict[str, Any]) -> dict[str, Any]:
        values = dict(values)
        if plan.action == "replica add":
            r: Replica = result
            rows = [x for x in _replicas(values, profile) if x["name"] != r.name]
            if r.host and r.port:
                rows.append({"name": r.name, "host": r.host, "port": r.port, "region": r.region})
            values["replicas"] = rows
        elif plan.action == "replica remove":
            name = plan.params["name"]
            values["replicas"] = [x for x in _replicas(values, profile) if x["name"] != name]
        elif plan.action == "pool add":
            _record_pool(values, profile, result)
        elif plan.action == "pool remove":
            name = plan.params["name"]
            if name in (values.get("pooler_database"), profile.pooler_database):
                for key in ("pooler_database", "pooler_host", "pooler_port"):
                    values.pop(key, None)
                remaining = backend.pools()
                if remaining:
                    _record_pool(values, profile, remaining[0])
        return values

    return update_profile_file(profile.name, change)


def _record_pool(values: dict[str, Any], profile: Profile, pool: Pool) -> None:
    """A pool as the profile's pooler: clients connect with dbname = the pool's name."""
    values["pooler_database"] = pool.name
    if pool.port:
        values["pooler_port"] = pool.port
    if pool.host and pool.host != profile.host:
        values["pooler_host"] = pool.host
    else:
        values.pop("pooler_host", None)
