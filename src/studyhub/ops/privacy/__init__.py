"""Personal data (the runbook's "Data Operations", without its gaps): GDPR access/portability
export, erasure with proof, the erasure ledger that makes erasure survive a restore or a fork,
what an erasure cannot reach, keyed pseudonyms and pseudonymised analytics.

Every function takes a psycopg connection as the app role (owner of the tables) and returns a
dataclass; the ``run_*`` functions are the commands (profile → rule check → connection → work →
audit line). Which tables to read or delete comes from ``graph`` (catalog + policy), so a table
added later is either covered or makes these functions refuse.

Modules: ``graph`` (the foreign-key graph from the catalog, checked against the policy),
``rows`` (the person and the SQL that reaches their rows), ``export``, ``erase``, ``ledger``,
``pseudonym``, ``anonymize`` (the analytics datasets: ``anonymize.DATASETS``,
``anonymize.anonymize``).

Nothing here imports the backup or cluster code: they re-apply this package's erasure ledger
after a restore or a fork. The erasure *commands* that need them (what an erasure could not
clean: backups, forks; re-applying to a fork) are in ``studyhub.ops.erasure``, above both.
"""

from __future__ import annotations

from studyhub.ops.privacy.ledger import (
    LEDGER_FILE,
    LEDGER_TABLE,
    ErasureAudit,
    ErasureMonth,
    ErasureReapply,
    LedgerEntry,
    ReappliedErasure,
    ReapplyResult,
    erasure_audit,
    erasure_ledger,
    merge_ledgers,
    read_ledger_file,
    reapply_erasure_ledger,
    reapply_erasures,
    save_ledger_beside_backups,
    write_ledger_file,
)
from studyhub.ops.privacy.graph import (
    PolicyError,
    PolicyReport,
    PolicyRow,
    PrivacyGraph,
    load_graph,
    policy_report,
)
from studyhub.ops.privacy.rows import (
    DEFAULT_ATTEMPTS,
    DEFAULT_LOCK_TIMEOUT,
    ErasureError,
    Person,
    PersonNotFound,
    check_person_args,
    database_name,
    find_person,
    parse_uuid,
)
from studyhub.ops.privacy.pseudonym import (
    KEY_ENV,
    KEY_FILE_ENV,
    MissingKeyError,
    PseudonymKey,
    generate_key_file,
    key_file,
    load_key,
)
from studyhub.ops.privacy.export import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    ExportedFile,
    ExportResult,
    export_person,
    run_export,
)
from studyhub.ops.privacy.erase import ErasureResult, PlaceNotCleaned, erase_person
from studyhub.ops.privacy import anonymize
from studyhub.ops.privacy.anonymize import AnonymizeResult, run_anonymize

__all__ = [
    "DEFAULT_ATTEMPTS", "DEFAULT_LOCK_TIMEOUT", "EXPORT_FORMAT", "EXPORT_VERSION", "KEY_ENV",
    "KEY_FILE_ENV", "LEDGER_FILE", "LEDGER_TABLE", "AnonymizeResult", "ErasureAudit",
    "ErasureError", "ErasureMonth", "ErasureReapply", "ErasureResult", "ExportResult",
    "ExportedFile", "LedgerEntry", "MissingKeyError", "Person", "PersonNotFound",
    "PlaceNotCleaned", "PolicyError", "PolicyReport", "PolicyRow", "PrivacyGraph",
    "PseudonymKey", "ReappliedErasure", "ReapplyResult", "anonymize", "check_person_args", "database_name",
    "erase_person", "erasure_audit", "erasure_ledger", "export_person", "find_person",
    "generate_key_file", "key_file", "load_graph", "load_key", "merge_ledgers", "parse_uuid",
    "policy_report", "read_ledger_file", "reapply_erasure_ledger",
    "reapply_erasures", "run_anonymize", "run_export", 
    "save_ledger_beside_backups", "write_ledger_file",
]
