"""The policy check itself, on synthetic catalogs (no database needed): every way a schema and
the policy can disagree is refused with the table named."""

from __future__ import annotations

import pytest

from studyhub.db.privacy_policy import TablePolicy
from studyhub.ops.privacy.graph import (
    Column,
    Equals,
    ForeignKey,
    InParent,
    PolicyError,
    TableInfo,
    build_graph,
    describe_conditions,
)

ROOTS = {"public.users": "user_id", "public.students": "student_id"}


def table(name, *cols, pk=("id",)):
    columns = tuple(Column(c, "uuid" if c.endswith("id") else "text", False) for c in cols)
    return TableInfo(f"public.{name}", columns, pk)


def fk(child, cols, parent, pcols=("id",), on_delete="c", nullable=False):
    return ForeignKey(f"fk_{child}_{parent}", f"public.{child}", tuple(cols), f"public.{parent}",
                      tuple(pcols), on_delete, nullable)


BASE_TABLES = {t.name: t for t in (
    table("users", "id", "email", "password_hash"),
    table("students", "id", "user_id", "full_name"),
    table("notes", "id", "student_id", "body"),
    table("comments", "id", "note_id", "text"),
)}
BASE_FKS = [fk("students", ["user_id"], "users"), fk("notes", ["student_id"], "students"),
            fk("comments", ["note_id"], "notes")]
BASE_POLICY = {
    "public.users": TablePolicy("erase", "account", exclude_columns=("password_hash",)),
    "public.students": TablePolicy("erase", "student"),
    "public.notes": TablePolicy("erase", "notes"),
    "public.comments": TablePolicy("erase", "comments on notes"),
}


def graph(tables=None, fks=None, policy=None):
    return build_graph(tables or BASE_TABLES, BASE_FKS if fks is None else fks,
                       policy or BASE_POLICY, ROOTS)


def test_indirect_tables_are_found_and_ordered_children_first():
    g = graph()
    assert g.complete, (g.unclassified, g.problems)
    assert g.erase_order == ["public.comments", "public.notes", "public.students", "public.users"]
    assert g.tables["public.notes"].select == (Equals("student_id", "student_id"),)
    sel = g.tables["public.comments"].select
    assert len(sel) == 1 and isinstance(sel[0], InParent)
    assert describe_conditions(sel) == "(note_id) in notes where student_id = :student_id"
    assert g.tables["public.users"].export_columns == ("id", "email")


def test_missing_policy_is_named():
    policy = dict(BASE_POLICY)
    del policy["public.comments"]
    g = graph(policy=policy)
    assert [f.table for f in g.unclassified] == ["public.comments"]
    with pytest.raises(PolicyError,
                       match=r"public\.comments \(fk_comments_notes → public\.notes\)"):
        g.require_complete("erase")


def test_person_columns_without_a_foreign_key_are_caught():
    tables = dict(BASE_TABLES)
    tables["public.logins"] = table("logins", "at", "email", pk=())
    g = graph(tables=tables)
    assert [(f.table, f.via) for f in g.unclassified] == [
        ("public.logins", "column email without a foreign key")]


def test_erase_policy_for_a_table_no_key_links_is_refused():
    fks = [k for k in BASE_FKS if k.child != "public.comments"]
    g = graph(fks=fks)
    assert any("public.comments holds personal data, but no foreign key" in p for p in g.problems)


def test_kept_table_must_only_link_through_set_null():
    policy = dict(BASE_POLICY)
    policy["public.comments"] = TablePolicy("keep", "comments", reason="moderation record")
    assert any("would delete or block" in p for p in graph(policy=policy).problems)
    fks = BASE_FKS[:2] + [fk("comments", ["note_id"], "notes", on_delete="n", nullable=True)]
    g = graph(fks=fks, policy=policy)
    assert g.complete and "public.comments" not in g.erase_order
    no_reason = dict(policy, **{"public.comments": TablePolicy("keep", "comments")})
    assert any("needs a reason" in p for p in graph(fks=fks, policy=no_reason).problems)


def test_set_null_links_do_not_make_rows_the_persons():
    tables = dict(BASE_TABLES)
    tables["public.notes"] = table("notes", "id", "student_id", "reviewer_id", "body")
    fks = BASE_FKS + [fk("notes", ["reviewer_id"], "students", on_delete="n", nullable=True)]
    g = graph(tables=tables, fks=fks)
    assert g.tables["public.notes"].select == (Equals("student_id", "student_id"),)
    assert Equals("reviewer_id", "student_id") in g.tables["public.notes"].verify


def test_secret_looking_columns_must_be_excluded():
    policy = dict(BASE_POLICY)
    policy["public.users"] = TablePolicy("erase", "account")
    problems = graph(policy=policy).problems
    assert any("users.password_hash looks like a secret" in p for p in problems)


def test_cycles_are_refused():
    tables = dict(BASE_TABLES)
    tables["public.notes"] = table("notes", "id", "student_id", "comment_id", "body")
    fks = BASE_FKS + [fk("notes", ["comment_id"], "comments")]
    assert any("cycle" in p for p in graph(tables=tables, fks=fks).problems)


def test_missing_roots_are_refused():
    g = build_graph({}, [], BASE_POLICY, ROOTS)
    with pytest.raises(PolicyError, match="public.users not found"):
        g.require_complete("export")
