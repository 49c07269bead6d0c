"""The entry points that change a cluster, whoever calls them (CLI, dashboard, a schedule): each
first asks the profile whether changes are allowed (``Profile.require_changes_allowed``), then
does the work and writes ONE audit line however it ends (``studyhub.audit.audited``:
``cluster.<action>`` with ``outcome`` ok/failed/interrupted and, on failure, ``error``).

A change is planned by its backend (``backend.fork_plan(...)`` …: what an operator reads, and on
DigitalOcean the exact API requests) and executed here with ``apply_plan``; the audit line names
the provider and the cluster, and what the result says (e.g. a fork's new id and how many erased
people were erased again in it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from studyhub.audit import audited
from studyhub.ops.cluster.factory import backend_for
from studyhub.ops.cluster.types import (
    Backup,
    ChangeResult,
    ClusterBackend,
    Fork,
    ForkResult,
    Plan,
    Pool,
    Progress,
    Replica,
    _noop,
    iso,
)
from studyhub.profiles import Profile


def _fork_details(plan: Plan, r: ForkResult) -> dict[str, Any]:
    e = r.erasures
    return {"name": plan.params["name"],
            "at": iso(datetime.fromisoformat(plan.params["at"]), "milliseconds"),
            "new_id": r.fork.id, "port": r.fork.port, "base_backup": plan.params.get("base"),
            "erasures": e.status if e else None,
            "erasures_reapplied": e.reapplied if e else None,
            "erasures_already_absent": e.already_absent if e else None}


def _backup_details(plan: Plan, b: Backup) -> dict[str, Any]:
    return {"label": b.label, "deleted": plan.params["delete"]}


def _replica_details(plan: Plan, r: Replica) -> dict[str, Any]:
    return {"name": r.name, "size": r.size, "region": r.region}


def _pool_details(plan: Plan, p: Pool) -> dict[str, Any]:
    return {"name": p.name, "database": p.database, "mode": p.mode, "size": p.size}


def _named(plan: Plan, _: ChangeResult) -> dict[str, Any]:
    return {"name": plan.params["name"]}


def _result_details(plan: Plan, r: ChangeResult) -> dict[str, Any]:
    return dict(r.details)


# plan.action → what its audit line records of the result
_AUDIT_DETAILS: dict[str, Callable[[Plan, Any], dict[str, Any]]] = {
    "basebackup": _backup_details,
    "fork": _fork_details,
    "fork remove": _named,
    "fork promote": _result_details,  # from/to, endpoint, profile file, erasures
    "replica add": _replica_details,
    "replica remove": _named,
    "resize": _result_details,
    "pool add": _pool_details,
    "pool remove": _named,
}


def apply_plan(backend: ClusterBackend, plan: Plan, *, progress: Progress = _noop,
               timeout_s: float = 3600, poll_interval_s: float = 10) -> Any:
    """Carry out a plan of ``backend`` (not an offline one: those are for --dry-run) and return
    its result: a Backup, ForkResult, Replica, Pool or ChangeResult. ``timeout_s`` and
    ``poll_interval_s`` apply to the operations that wait (fork, fork promote, replica add,
    resize)."""
    profile = backend.profile
    profile.require_changes_allowed(f"cluster {plan.action}")
    wait = {"progress": progress, "timeout_s": timeout_s, "poll_interval_s": poll_interval_s}
    run: dict[str, Callable[[], Any]] = {
        # local only: DigitalOcean's basebackup_plan refuses, so there is no plan to carry out
        "basebackup": lambda: backend.basebackup(plan, progress=progress),  # type: ignore
        "fork": lambda: backend.fork(plan, **wait),
        "fork remove": lambda: backend.fork_remove(plan),
        "fork promote": lambda: backend.fork_promote(plan, **wait),
        "replica add": lambda: backend.replica_add(plan, **wait),
        "replica remove": lambda: backend.replica_remove(plan),
        "resize": lambda: backend.resize(plan, **wait),
        "pool add": lambda: backend.pool_add(plan),
        "pool remove": lambda: backend.pool_remove(plan),
    }
    # The change may have been sent before it failed (a fork created, then the wait timed out):
    # the attempt is on record either way. Our errors carry no secrets; others are named by
    # type only (audit.describe_error).
    with audited(f"cluster.{plan.action.replace(' ', '.')}", profile.name,
                 provider=plan.provider, cluster=plan.cluster) as audit:
        result = run[plan.action]()
        audit.update(_AUDIT_DETAILS[plan.action](plan, result))
    return result


def fork_stop(profile: Profile, name: str) -> Fork:
    """Stop a fork (local: its data stays; ``fork_start`` brings it back); audited."""
    profile.require_changes_allowed("cluster forks stop")
    with audited("cluster.forks.stop", profile.name, name=name) as audit:
        fork = backend_for(profile).fork_stop(name)
        audit["status"] = fork.status
    return fork


def fork_start(profile: Profile, name: str) -> Fork:
    """Start a stopped local fork again (on a new port if its own was taken); audited."""
    profile.require_changes_allowed("cluster forks start")
    with audited("cluster.forks.start", profile.name, name=name) as audit:
        fork = backend_for(profile).fork_start(name)
        audit["status"] = fork.status
    return fork
