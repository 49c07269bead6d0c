"""Compatibility re-export, only until the redesign's branches are merged: modules owned by
other helpers still import ``studyhub.local.cluster``. Import from ``studyhub.local`` instead;
the coordinator deletes this module at merge."""

from studyhub.local import (
    APP_DATABASE,
    APP_ROLE,
    LOG_PRIVACY_SETTINGS,
    OPS_ROLE,
    REPLICA_APP_NAME,
    REPLICA_SLOT,
    REPLICATION_ROLE,
    SUPERUSER,
    ClusterStatus,
    LocalCluster,
    LocalState,
    NodeStatus,
    conf_quote,
    pick_free_port,
    port_is_free,
)

__all__ = [
    "APP_DATABASE", "APP_ROLE", "LOG_PRIVACY_SETTINGS", "OPS_ROLE", "REPLICA_APP_NAME",
    "REPLICA_SLOT", "REPLICATION_ROLE", "SUPERUSER", "ClusterStatus", "LocalCluster",
    "LocalState", "NodeStatus", "conf_quote", "pick_free_port", "port_is_free",
]
