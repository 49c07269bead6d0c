"""The personal-data graph: which tables refer to a person, how to find the person's rows in each,
and in which order to delete them — derived from the catalog's foreign keys at run time and
checked against the policy in ``studyhub.db.privacy_policy``.

The ids of the person travel as transaction-local custom settings (``studyhub_privacy.user_id``,
``studyhub_privacy.student_id``), set with bound parameters: statement text (including COPY,
which cannot take parameters) never carries an id, so pg_stat_statements, pg_stat_activity and
the server log never see one.
"""

from __future__ import annotations

import graphlib
import re
from dataclasses import dataclass, field
from typing import Union

import psycopg
from psycopg import sql

from studyhub.db.privacy_policy import PERSON_COLUMNS, POLICY, ROOTS, TablePolicy
from studyhub.errors import RefusedError
from studyhub.ops.queries import load

OWNING_ACTIONS = frozenset("arc")  # NO ACTION, RESTRICT, CASCADE: the row belongs to its parent
ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL",
             "d": "SET DEFAULT"}
SETTING_PREFIX = "studyhub_privacy."
POLICY_FILE = "src/studyhub/db/privacy_policy.py"
# Columns that must never leave the database in an export unless the policy excludes them.
SENSITIVE_COLUMN = re.compile(
    r"password|passwd|secret|api_?key|private_?key|salt$|(^|_)hash$|(^|_)token$"
)


class PolicyError(RefusedError):
    """The schema and the privacy policy disagree; nothing was read or changed."""


def split_name(qualified: str) -> tuple[str, str]:
    schema, _, table = qualified.partition(".")
    return schema, table


def table_ident(qualified: str) -> sql.Identifier:
    return sql.Identifier(*split_name(qualified))


def short_name(qualified: str) -> str:
    schema, table = split_name(qualified)
    return table if schema == "public" else qualified


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool


@dataclass(frozen=True)
class TableInfo:
    name: str  # schema.table
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class ForeignKey:
    name: str
    child: str
    child_columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    on_delete: str
    nullable: bool

    @property
    def owning(self) -> bool:
        return self.on_delete in OWNING_ACTIONS

    def describe(self) -> str:
        return (f"{self.name}: {self.child}({', '.join(self.child_columns)}) → "
                f"{self.parent}({', '.join(self.parent_columns)}) ON DELETE "
                f"{ON_DELETE.get(self.on_delete, self.on_delete)}")


@dataclass(frozen=True)
class Equals:
    """``column = <the person's param>``: checkable by value, even after the parent is gone."""

    column: str
    param: str  # user_id | student_id


@dataclass(frozen=True)
class InParent:
    """``(child cols) IN (SELECT parent cols FROM parent WHERE <parent's conditions>)``."""

    fk: ForeignKey
    parent_conditions: tuple["Condition", ...]


Condition = Union[Equals, InParent]


@dataclass
class PersonalTable:
    """A table with rows about the person, and how to find them."""

    info: TableInfo
    policy: TablePolicy
    foreign_keys: list[ForeignKey]  # this table's keys pointing at other personal tables
    select: tuple[Condition, ...]  # the person's rows (exported; deleted when action is erase)
    verify: tuple[Condition, ...]  # every way a row could still point at the person
    is_root: bool = False

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def export_columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.info.column_names if c not in self.policy.exclude_columns)


@dataclass
class Finding:
    table: str
    via: str  # the foreign key or column that makes it personal


@dataclass
class PrivacyGraph:
    tables: dict[str, PersonalTable]  # personal tables, parents before children
    erase_order: list[str]  # tables whose rows are deleted, children first
    references: dict[str, tuple[str, ...]]  # reference table → label columns (subjects)
    all_foreign_keys: list[ForeignKey]
    unclassified: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # policy tables this database lacks

    @property
    def complete(self) -> bool:
        return not self.unclassified and not self.problems

    def require_complete(self, action: str) -> None:
        """Refuse ``action`` (one line naming every table) unless policy and schema agree."""
        if self.unclassified:
            named = "; ".join(f"{f.table} ({f.via})" for f in self.unclassified)
            raise PolicyError(
                f"refusing to {action}: table(s) referencing a person have no privacy policy: "
                f"{named}. Add each to POLICY in {POLICY_FILE} (erase, or keep with a reason); "
                f"nothing was read or changed"
            )
        if self.problems:
            raise PolicyError(f"refusing to {action}: {'; '.join(self.problems)}")

    def exported(self) -> list[PersonalTable]:
        return [t for t in self.tables.values() if t.policy.export]


def _via(fk: ForeignKey, parent_conditions: tuple[Condition, ...]) -> list[Condition]:
    """Conditions on the child that select the rows pointing (through ``fk``) at the parent rows
    selected by ``parent_conditions``; simplified to ``child_col = param`` where the parent's
    condition is on one of the key's columns (every student-owned table: ``student_id``)."""
    simple: list[Condition] = []
    rest: list[Condition] = []
    for cond in parent_conditions:
        if isinstance(cond, Equals) and cond.column in fk.parent_columns:
            child_col = fk.child_columns[fk.parent_columns.index(cond.column)]
            simple.append(Equals(child_col, cond.param))
        else:
            rest.append(cond)
    if rest:
        simple.append(InParent(fk, tuple(rest)))
    return simple


def _dedupe(conds: list[Condition]) -> tuple[Condition, ...]:
    return tuple(dict.fromkeys(conds))


def read_catalog(conn: psycopg.Connection) -> tuple[dict[str, TableInfo], list[ForeignKey]]:
    """Tables with their columns, and every foreign key with its columns named (two cheap
    catalog queries; no privilege on the tables needed)."""
    cols: dict[str, list[Column]] = {}
    pks: dict[str, list[tuple[int, str]]] = {}
    names: dict[tuple[str, int], Column] = {}
    for schema, table, attnum, column, type_, not_null, pk_pos in conn.execute(
        load("get_table_columns_with_keys")
    ).fetchall():
        name = f"{schema}.{table}"
        col = Column(column, type_, not_null)
        cols.setdefault(name, []).append(col)
        names[(name, attnum)] = col
        if pk_pos:
            pks.setdefault(name, []).append((pk_pos, column))
    tables = {
        name: TableInfo(name, tuple(c), tuple(col for _, col in sorted(pks.get(name, []))))
        for name, c in cols.items()
    }
    fks = []
    for conname, cs, ct, cnums, ps, pt, pnums, on_delete in conn.execute(
        load("get_foreign_key_graph")
    ).fetchall():
        child, parent = f"{cs}.{ct}", f"{ps}.{pt}"
        if child not in tables or parent not in tables:
            continue  # an extension's table
        ccols = [names[(child, n)] for n in cnums]
        fks.append(ForeignKey(conname, child, tuple(c.name for c in ccols), parent,
                              tuple(names[(parent, n)].name for n in pnums), on_delete,
                              any(not c.not_null for c in ccols)))
    return tables, fks


def build_graph(
    tables: dict[str, TableInfo],
    fks: list[ForeignKey],
    policy: dict[str, TablePolicy] = POLICY,
    roots: dict[str, str] = ROOTS,
) -> PrivacyGraph:
    """Derive the personal tables from the foreign keys and check them against ``policy``."""
    graph = PrivacyGraph({}, [], {}, fks)
    for root in roots:
        info = tables.get(root)
        if info is None:
            graph.problems.append(f"table {root} not found (is the database migrated?)")
        elif len(info.primary_key) != 1 or dict(
            (c.name, c.type) for c in info.columns
        )[info.primary_key[0]] != "uuid":
            graph.problems.append(f"{root} must have a single uuid primary key")
    if graph.problems:
        return graph

    # Reachability: a table is personal if any of its keys points at a personal table.
    personal = set(roots)
    changed = True
    while changed:
        changed = False
        for fk in fks:
            if fk.parent in personal and fk.child not in personal:
                personal.add(fk.child)
                changed = True

    for name in sorted(personal):
        if name not in policy:
            fk = next((k for k in fks if k.child == name and k.parent in personal), None)
            graph.unclassified.append(
                Finding(name, f"{fk.name} → {fk.parent}" if fk else "a root of the graph"))
    for name, info in sorted(tables.items()):
        if name in personal or name in policy:
            continue
        hits = [c for c in info.column_names if c in PERSON_COLUMNS]
        if hits:
            graph.unclassified.append(Finding(name, f"column {hits[0]} without a foreign key"))

    for name, pol in policy.items():
        info = tables.get(name)
        if info is None:
            graph.absent.append(name)
            continue
        if pol.action not in ("erase", "keep"):
            graph.problems.append(f"policy for {name}: unknown action {pol.action!r}")
        if pol.action == "keep" and not pol.reason.strip():
            graph.problems.append(f"policy for {name}: a kept table needs a reason")
        if pol.action == "erase" and name not in personal:
            graph.problems.append(
                f"the policy says {name} holds personal data, but no foreign key links it to "
                f"{' or '.join(roots)} (was a key dropped?)")
        if pol.action == "keep" and name in personal:
            for fk in fks:
                if fk.child == name and fk.parent in personal and fk.owning:
                    graph.problems.append(
                        f"{name} is kept on erasure but {fk.describe()} would delete or block "
                        f"it: make the key ON DELETE SET NULL or erase the table")
        if pol.export and name in personal:
            leaking = [c for c in info.column_names
                       if SENSITIVE_COLUMN.search(c) and c not in pol.exclude_columns]
            if leaking:
                graph.problems.append(
                    f"{name}.{leaking[0]} looks like a secret: list it in exclude_columns of "
                    f"the policy (or rename it) before exporting")
        missing = [c for c in pol.label_columns if c not in info.column_names]
        if missing:
            graph.problems.append(f"policy for {name}: label column {missing[0]} does not exist")
        if pol.label_columns and not missing:
            graph.references[name] = pol.label_columns

    # Conditions, parents before children.
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in personal:
        sorter.add(name)
    for fk in fks:
        if fk.child in personal and fk.parent in personal and fk.child != fk.parent:
            sorter.add(fk.child, fk.parent)
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = " → ".join(exc.args[1])
        graph.problems.append(f"foreign keys form a cycle ({cycle}): no erase order exists")
        order = sorted(personal)
    order = [n for n in order if n in tables]

    select: dict[str, tuple[Condition, ...]] = {}
    for name in order:
        if name in roots:
            select[name] = (Equals(tables[name].primary_key[0], roots[name]),)
            continue
        edges = [fk for fk in fks
                 if fk.child == name and fk.parent in select and fk.parent != name]
        use = [fk for fk in edges if fk.owning] or edges  # links only: the linked rows
        conds: list[Condition] = []
        for fk in use:
            conds += _via(fk, select[fk.parent])
        select[name] = _dedupe(conds)

    for name in order:
        edges = [fk for fk in fks if fk.child == name and fk.parent in select
                 and fk.parent != name]
        verify: list[Condition] = list(select[name]) if name in roots else []
        for fk in edges:
            verify += _via(fk, select[fk.parent])
        pol = policy.get(name)
        if pol is None:
            continue
        graph.tables[name] = PersonalTable(tables[name], pol, edges, select[name],
                                           _dedupe(verify), is_root=name in roots)

    for name, pol in policy.items():
        nest = pol.nest_under
        if not nest or name not in graph.tables:
            continue
        parent = graph.tables.get(nest)
        keys = [fk for fk in graph.tables[name].foreign_keys
                if fk.parent == nest and not fk.nullable]
        if parent is None or not parent.policy.export or not keys:
            graph.problems.append(
                f"policy for {name}: nest_under {nest} needs an exported personal table "
                f"referenced by a NOT NULL foreign key")

    graph.tables = {n: graph.tables[n] for n in policy if n in graph.tables}  # policy order
    graph.erase_order = [n for n in reversed(order)
                         if n in graph.tables and graph.tables[n].policy.action == "erase"]
    return graph


def load_graph(conn: psycopg.Connection, policy: dict[str, TablePolicy] = POLICY,
               roots: dict[str, str] = ROOTS) -> PrivacyGraph:
    """Read the catalog (needs no privilege on the tables) and build the checked graph."""
    tables, fks = read_catalog(conn)
    return build_graph(tables, fks, policy, roots)


# ------------------------------------------------------------------------------ SQL composition

def param_value(param: str) -> sql.Composable:
    """The person's id, read from the transaction-local setting (never a literal)."""
    return sql.SQL("NULLIF(current_setting({}), '')::uuid").format(
        sql.Literal(SETTING_PREFIX + param))


def set_person(conn: psycopg.Connection, user_id: object, student_id: object | None) -> None:
    """Bind the person's ids for the current transaction (bound parameters, is_local=true)."""
    conn.execute(
        "SELECT set_config(%s, %s, true), set_config(%s, %s, true)",
        (SETTING_PREFIX + "user_id", str(user_id),
         SETTING_PREFIX + "student_id", "" if student_id is None else str(student_id)),
    )


def condition_sql(conds: tuple[Condition, ...], alias: str, depth: int = 0) -> sql.Composable:
    parts: list[sql.Composable] = []
    for cond in conds:
        if isinstance(cond, Equals):
            parts.append(sql.SQL("{} = {}").format(sql.Identifier(alias, cond.column),
                                                   param_value(cond.param)))
            continue
        inner = f"p{depth + 1}"
        child = [sql.Identifier(alias, c) for c in cond.fk.child_columns]
        lhs = child[0] if len(child) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(child))
        parts.append(sql.SQL("{} IN (SELECT {} FROM {} AS {} WHERE {})").format(
            lhs,
            sql.SQL(", ").join(sql.Identifier(inner, c) for c in cond.fk.parent_columns),
            table_ident(cond.fk.parent),
            sql.Identifier(inner),
            condition_sql(cond.parent_conditions, inner, depth + 1),
        ))
    if not parts:
        return sql.SQL("false")
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))


def where_sql(table: str, conds: tuple[Condition, ...], alias: str = "t") -> sql.Composable:
    """The rows matching any of ``conds``. Several conditions become a TID list built from one
    index-friendly SELECT per condition (an OR across a sub-select would scan the table)."""
    if len(conds) <= 1:
        return condition_sql(conds, alias)
    return sql.SQL("{}.ctid = ANY(ARRAY({}))").format(
        sql.Identifier(alias),
        sql.SQL(" UNION ").join(
            sql.SQL("SELECT s.ctid FROM {} AS s WHERE {}").format(
                table_ident(table), condition_sql((c,), "s"))
            for c in conds
        ),
    )


def count_sql(table: str, conds: tuple[Condition, ...]) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
        table_ident(table), where_sql(table, conds))


def delete_sql(table: str, conds: tuple[Condition, ...]) -> sql.Composed:
    return sql.SQL("DELETE FROM {} AS t WHERE {}").format(
        table_ident(table), where_sql(table, conds))


def lock_sql(table: str, conds: tuple[Condition, ...]) -> sql.Composed:
    return sql.SQL("SELECT 1 FROM {} AS t WHERE {} FOR UPDATE").format(
        table_ident(table), where_sql(table, conds))


def remaining_expr(table: str, conds: tuple[Condition, ...]) -> sql.Composable:
    """How many rows still point at the person: one indexed count per condition, summed."""
    if not conds:
        return sql.SQL("0::bigint")
    return sql.SQL(" + ").join(
        sql.SQL("(SELECT count(*) FROM {} AS t WHERE {})").format(
            table_ident(table), condition_sql((c,), "t"))
        for c in conds
    )


def remaining_sql(tables: list[tuple[str, tuple[Condition, ...]]]) -> sql.Composed:
    """One statement, one column per table: the rows still pointing at the person."""
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        remaining_expr(name, conds) for name, conds in tables))


def describe_conditions(conds: tuple[Condition, ...]) -> str:
    """A short human reading of a selection: ``student_id = :student_id``."""
    parts = []
    for c in conds:
        if isinstance(c, Equals):
            parts.append(f"{c.column} = :{c.param}")
        else:
            cols = ", ".join(c.fk.child_columns)
            parts.append(f"({cols}) in {short_name(c.fk.parent)} where "
                         f"{describe_conditions(c.parent_conditions)}")
    return " or ".join(parts) or "nothing"
