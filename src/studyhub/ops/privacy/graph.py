"""The personal-data graph: which tables refer to a person, how to find the person's rows in each,
and in which order to delete them — derived from the catalog's foreign keys at run time and
checked against the policy in ``studyhub.db.privacy_policy`` (``policy_report``: the check as a
report). The SQL that reaches the rows is composed from these conditions in ``rows``.
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


# ------------------------------------------------------------------------------ the policy report

@dataclass
class PolicyRow:
    table: str
    status: str  # erase | keep | unclassified | absent
    exported: bool
    selects: str  # how the person's rows are found, or why the table is kept
    foreign_keys: list[str] = field(default_factory=list)


@dataclass
class PolicyReport:
    database: str
    complete: bool
    tables: list[PolicyRow]
    erase_order: list[str]
    problems: list[str]


def policy_report(conn: psycopg.Connection, policy: dict[str, TablePolicy] = POLICY
                  ) -> PolicyReport:
    """The personal-data graph of this database checked against the policy (catalog only:
    works as the ops role)."""
    graph = load_graph(conn, policy)
    rows: list[PolicyRow] = []
    for name, table in graph.tables.items():
        how = describe_conditions(table.select)
        if table.policy.action == "keep":
            how = f"kept: {table.policy.reason}"
        rows.append(PolicyRow(short_name(name), table.policy.action, table.policy.export, how,
                              [fk.describe() for fk in table.foreign_keys]))
    for name, pol in policy.items():
        if name not in graph.tables and name not in graph.absent:
            rows.append(PolicyRow(short_name(name), pol.action, False,
                                  f"kept: {pol.reason}" if pol.reason else "-"))
    for f in graph.unclassified:
        rows.append(PolicyRow(short_name(f.table), "unclassified", False,
                              f"no policy ({f.via})"))
    for name in graph.absent:
        rows.append(PolicyRow(short_name(name), "absent", False, "not in this database"))
    return PolicyReport(conn.info.dbname, graph.complete, rows,
                        [short_name(n) for n in graph.erase_order], graph.problems)
