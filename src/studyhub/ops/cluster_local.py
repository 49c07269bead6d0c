"""Compatibility re-export, only until the redesign's branches are merged: modules owned by
other helpers still import ``studyhub.ops.cluster_local``. Use ``studyhub.ops.cluster``
(``LocalBackend``) and ``studyhub.local`` (``SEGMENT_RE``); the coordinator deletes this module."""

from studyhub.local import SEGMENT_RE
from studyhub.ops.cluster import LocalBackend

__all__ = ["SEGMENT_RE", "LocalBackend"]
