"""Compatibility re-export, only until the redesign's branches are merged: modules owned by
other helpers still import ``studyhub.local.cluster``. Import from ``studyhub.local`` instead;
the coordinator deletes this module at merge."""

from studyhub.local import LOG_PRIVACY_SETTINGS, LocalCluster, pick_free_port

__all__ = ["LOG_PRIVACY_SETTINGS", "LocalCluster", "pick_free_port"]
