"""TRANSITIONAL — delete at the merge of the redesign. The backup set format moved to
``studyhub.ops.backup`` (``setformat.py``, ``retention.py``); import its public surface from
there: ``from studyhub.ops import backup`` then ``backup.list_sets(...)``.

Kept only while code owned by other parts of the redesign still imports this path:
``ops/cluster.py`` (``default_backup_dir``), ``ops/privacy_outside.py`` (``default_backup_dir``,
``list_sets``), ``dashboard/optional.py`` (``default_backup_dir``, ``list_sets``),
``tests/test_dashboard.py`` (``list_sets``) and ``tests/test_untrusted_text.py`` (``Manifest``,
``Compression``, ``FileEntry``, ``MANIFEST``, ``PARTIAL_PREFIX``, ``list_sets``,
``partial_writer_pid``).
"""

from __future__ import annotations

from studyhub.ops.backup import (
    FORMAT_VERSION,
    MANIFEST,
    PARTIAL_PREFIX,
    BackupError,
    BackupSetInfo,
    Compression,
    FileEntry,
    Manifest,
    Problem,
    PruneDecision,
    PrunePlan,
    TableChecksum,
    TableFile,
    apply_prune,
    default_backup_dir,
    list_sets,
    partial_writer_pid,
    prune_plan,
    read_manifest,
    resolve_set,
    set_name,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "PARTIAL_PREFIX",
    "BackupError",
    "BackupSetInfo",
    "Compression",
    "FileEntry",
    "Manifest",
    "Problem",
    "PruneDecision",
    "PrunePlan",
    "TableChecksum",
    "TableFile",
    "apply_prune",
    "default_backup_dir",
    "list_sets",
    "partial_writer_pid",
    "prune_plan",
    "read_manifest",
    "resolve_set",
    "set_name",
]
