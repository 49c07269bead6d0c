"""The embedded PostgreSQL: project-owned clusters (a primary, an optional streaming replica and
PgBouncer) under ``$STUDYHUB_HOME``, the default for every command and test.

Public surface (import these from ``studyhub.local``):

- ``LocalCluster`` (``server``): initdb, up/down/status/destroy, the read replicas
  ("replica", "replica2" …, each with its own slot, port and data directory) and the pooler,
  ``admin_connect``, ``profile()``; ``ClusterStatus``/``NodeStatus`` are what ``status`` returns.
- ``LocalHome``, ``LocalState``, ``local_profile`` (``state``): the directories and the state
  file under the home, and the ``local`` profile read from them (``studyhub.profiles`` uses it);
  the role and database names; ``pick_free_port``/``port_is_free``; ``SEGMENT_RE`` (WAL file
  names in the archive) and ``BACKUP_META`` (a complete base backup's metadata file).
- ``LOG_PRIVACY_SETTINGS``, ``conf_quote`` (``config``): what the servers are configured with.
- ``proc``: running PostgreSQL's programs as the server user, and their processes.

Layers inside: ``state`` and ``proc`` need nothing else here; ``config`` builds on them;
``server`` on all three. Nothing here imports ``studyhub.profiles`` (which imports this package),
only ``studyhub.profile_model``.
"""

from studyhub.local import proc
from studyhub.local.config import LOG_PRIVACY_SETTINGS, conf_quote
from studyhub.local.server import ClusterStatus, LocalCluster, NodeStatus
from studyhub.local.state import (
    APP_DATABASE,
    APP_ROLE,
    BACKUP_META,
    MAX_REPLICAS,
    OPS_ROLE,
    REPLICA_APP_NAME,
    REPLICA_SLOT,
    REPLICATION_ROLE,
    SEGMENT_RE,
    SUPERUSER,
    LocalHome,
    LocalState,
    ReplicaNode,
    local_profile,
    pick_free_port,
    port_is_free,
    replica_slot,
)

__all__ = [
    "APP_DATABASE", "APP_ROLE", "BACKUP_META", "LOG_PRIVACY_SETTINGS", "MAX_REPLICAS",
    "OPS_ROLE", "REPLICA_APP_NAME", "REPLICA_SLOT", "REPLICATION_ROLE", "SEGMENT_RE",
    "SUPERUSER", "ClusterStatus", "LocalCluster", "LocalHome", "LocalState", "NodeStatus",
    "ReplicaNode", "conf_quote", "local_profile", "pick_free_port", "port_is_free", "proc",
    "replica_slot",
]
