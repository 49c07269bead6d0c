"""Helpers for migration files (import them inside a revision)."""

from __future__ import annotations

OPS_ROLE = "studyhub_ops"


def if_role_exists(role: str, statement: str) -> str:
    """SQL that runs ``statement`` only where ``role`` exists (a managed cluster may name its
    roles differently; the migration must not fail there)."""
    role_literal = role.replace("'", "''")
    return (
        "DO $$\nBEGIN\n"
        f"    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role_literal}') THEN\n"
        f"        {statement};\n"
        "    END IF;\nEND\n$$"
    )


def grant_to_ops(statement_template: str) -> str:
    """``grant_to_ops("GRANT SELECT ON ops.x TO {role}")`` → guarded GRANT for the ops role."""
    return if_role_exists(OPS_ROLE, statement_template.format(role=OPS_ROLE))
