"""Cluster operations that behave the same on DigitalOcean (through its API) and on the local
embedded cluster (with PostgreSQL's own machinery): info, backups, point-in-time forks, read
replicas, resize and connection pools.

``backend_for(profile)`` picks the implementation: ``LocalBackend`` (``local``, built on
``local_archive`` and ``local_forks``) for the ``local`` profile, ``DigitalOceanBackend``
(``digitalocean``, on ``digitalocean_api``) for a profile with a ``do_cluster_id``. Both return
the dataclasses of ``types``; changing operations are split into a *plan* (what would be done:
the lines an operator reads and, on DigitalOcean, the exact API requests) and its execution with
``apply_plan``, which checks the profile allows changes and writes the audit line, so a renderer
can show the plan, honour ``--dry-run`` and ask for confirmation in between.

Inside, imports go one way: ``types`` ← ``common`` ← the backends ← ``factory`` ←
``changes`` (which records replica and pool changes in the profile file with
``profile_record``).
"""

from studyhub.ops.cluster.changes import apply_plan, fork_start, fork_stop
from studyhub.ops.cluster.common import (
    KEY_TABLES,
    fork_profile,
    verify_database,
    verify_profile,
)
from studyhub.ops.cluster.factory import backend_for, fork_target
from studyhub.ops.cluster.local import LocalBackend
from studyhub.ops.cluster.profile_record import RECORDED_ACTIONS, check_profile_file
from studyhub.ops.cluster.types import (
    NAME_RE,
    POOL_MODES,
    POOL_NAME_RE,
    ApiRequest,
    Backup,
    Backups,
    ChangeResult,
    ClusterBackend,
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
    StreamingClient,
    TableCheck,
    Verification,
    WalArchive,
    check_name,
    check_pool,
    iso,
    parse_timestamp,
    refuse_outside,
)

__all__ = [
    "KEY_TABLES", "NAME_RE", "POOL_MODES", "POOL_NAME_RE", "RECORDED_ACTIONS", "ApiRequest", "Backup", "Backups",
    "ChangeResult", "ClusterBackend", "ClusterInfo", "ClusterOpError", "Fork", "ForkErasures",
    "ForkResult", "LocalBackend", "Node", "Plan", "Pool", "Progress", "RecoveryWindow",
    "Replica", "StreamingClient", "TableCheck", "Verification", "WalArchive", "apply_plan",
    "backend_for", "check_name", "check_pool", "check_profile_file", "fork_profile", "fork_start", "fork_stop",
    "fork_target", "iso", "parse_timestamp", "refuse_outside", "verify_database",
    "verify_profile",
]
