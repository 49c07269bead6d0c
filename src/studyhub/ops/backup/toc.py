"""A pg_dump archive's table of contents (``pg_restore --list``), and the SQL of its indexes,
keys and foreign keys (``pg_restore --file=-``) with the tables each one is on and references:
what the restore scheduler runs itself instead of leaving it to pg_restore."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from studyhub.local.proc import pg_program
from studyhub.ops.backup.setformat import BackupError
from studyhub.ops.backup.workers import stderr_tail

_DESCS = sorted([
    "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOBS", "CAST", "CHECK CONSTRAINT",
    "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE", "DATABASE PROPERTIES",
    "DEFAULT", "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER", "EXTENSION",
    "FK CONSTRAINT", "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "FOREIGN TABLE", "FUNCTION",
    "INDEX", "INDEX ATTACH", "LARGE OBJECT", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
    "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY", "PROCEDURE",
    "PROCEDURAL LANGUAGE", "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
    "ROW SECURITY", "RULE", "SCHEMA", "SEARCHPATH", "SECURITY LABEL", "SEQUENCE",
    "SEQUENCE OWNED BY", "SEQUENCE SET", "SERVER", "SHELL TYPE", "STATISTICS", "STDSTRINGS",
    "SUBSCRIPTION", "TABLE", "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM",
    "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
], key=len, reverse=True)
_TOC_RE = re.compile(r"^(\d+); (\d+) (\d+) (" + "|".join(map(re.escape, _DESCS)) + r") (.*)$")
# pg_restore --verbose: an item launched or finished (parallel), an item created (serial)
ITEM_RE = re.compile(r"(launching|finished) item (\d+) (" + "|".join(map(re.escape, _DESCS)) + r") ?(.*)$")
SERIAL_RE = re.compile(r'(?:creating ([A-Z ]+) "(.*)"|processing data for table "(.*)")')


@dataclass
class TocEntry:
    dump_id: int
    desc: str
    schema: str
    tag: str
    line: str

    @property
    def kind(self) -> str:
        return {"TABLE DATA": "data", "INDEX": "index", "CONSTRAINT": "constraint",
                "CHECK CONSTRAINT": "constraint", "FK CONSTRAINT": "fk",
                "SEQUENCE SET": "data"}.get(self.desc, "other")


def read_toc(archive: Path) -> list[TocEntry]:
    """``pg_restore -l``: the archive's table of contents."""
    out = subprocess.run([str(pg_program("pg_restore")), "--list", str(archive)],
                         capture_output=True, text=True, cwd="/")
    if out.returncode != 0:
        raise BackupError(f"pg_restore cannot read {archive}: {stderr_tail(out.stderr.splitlines())}")
    entries = []
    for line in out.stdout.splitlines():
        m = _TOC_RE.match(line)
        if not m:
            continue
        rest = m.group(5)
        schema, _, tag_owner = rest.partition(" ")
        tag = tag_owner.rsplit(" ", 1)[0] if " " in tag_owner else tag_owner
        entries.append(TocEntry(int(m.group(1)), m.group(4), schema, tag, line))
    return entries


def is_extension_entry(e: TocEntry) -> bool:
    return e.desc == "EXTENSION" or (e.desc == "COMMENT" and e.tag.startswith("EXTENSION "))


def write_list(path: Path, entries: list[TocEntry]) -> Path:
    path.write_text("".join(e.line + "\n" for e in entries))
    return path


_POST_HEADER_RE = re.compile(
    r"^--\n-- Name: (?P<name>.*); Type: (?P<desc>[A-Z ]+); Schema: (?P<schema>[^;]*); "
    r"Owner: [^\n]*\n--\n", re.M)
IDENT = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_ON_TABLE_RE = re.compile(
    r"^(?:ALTER TABLE ONLY|CREATE (?:UNIQUE )?INDEX " + IDENT + r" ON(?: ONLY)?) "
    r"(?P<qual>" + IDENT + r"\." + IDENT + r")", re.M)
_SESSION_LINE_RE = re.compile(r"^(SET |SELECT pg_catalog\.set_config\(|\\)")


def _unquote_qualified(text: str) -> tuple[str, str]:
    parts = re.findall(IDENT, text)
    return tuple(p[1:-1].replace('""', '"') if p.startswith('"') else p  # type: ignore[return-value]
                 for p in parts[:2])


_REFERENCES_RE = re.compile(r"\bREFERENCES (?P<qual>" + IDENT + r"\." + IDENT + r")\(")


@dataclass
class PostItem:
    """One statement of the post-data section (an index, key or foreign key) with its table; the
    scheduler adds its own kinds (KEY INDEX, KEY ATTACH, CHECKSUM, ANALYZE)."""

    entry: TocEntry
    table: tuple[str, str]
    statement: str
    references: tuple[str, str] | None = None  # FK CONSTRAINT: the referenced table
    after: "PostItem | None" = None  # runs only once that item is done
    done: bool = False
    index: str | None = None  # KEY INDEX: the name of the unique index it builds


def post_data_statements(archive: Path, entries: list[TocEntry], work: Path,
                         ) -> tuple[list[PostItem], list[str]]:
    """The SQL of each index, key and foreign key among ``entries``, with the table it is on
    (and the table a foreign key references), from ``pg_restore -f -`` (no database
    involved): our scheduler runs these as soon as their tables are ready. Also returns the
    session settings pg_restore would send (the same for every item: tablespaces and table
    access methods other than the default are not carried over). Items whose SQL or tables
    cannot be told are left out: they go to the final pg_restore with everything else."""
    wanted = [e for e in entries if e.desc in ("INDEX", "CONSTRAINT", "FK CONSTRAINT")]
    if not wanted:
        return [], []
    out = subprocess.run([str(pg_program("pg_restore")), "--no-owner", "--no-acl", "--file=-",
                          f"--use-list={write_list(work / 'post.list', wanted)}", str(archive)],
                         capture_output=True, text=True, cwd="/")
    if out.returncode != 0:
        raise BackupError(f"pg_restore cannot read {archive}: {stderr_tail(out.stderr.splitlines())}")
    text = out.stdout
    by_key = {(e.desc, e.schema, e.tag): e for e in wanted}
    session: list[str] = []
    items: list[PostItem] = []
    heads = list(_POST_HEADER_RE.finditer(text))
    for line in text[: heads[0].start() if heads else len(text)].splitlines():
        if line.startswith(("SET ", "SELECT pg_catalog.set_config(")) and line not in session:
            session.append(line)
    for i, h in enumerate(heads):
        body = text[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        lines = []
        for line in body.splitlines():
            if _SESSION_LINE_RE.match(line):
                if line.startswith(("SET ", "SELECT")) and line not in session:
                    session.append(line)
            elif line.strip() and not line.startswith("--"):
                lines.append(line)
        entry = by_key.get((h.group("desc"), h.group("schema"), h.group("name")))
        statement = "\n".join(lines).strip()
        m = _ON_TABLE_RE.search(statement)
        if entry is None or not m or statement.count(";") != 1:
            continue
        refs = None
        if entry.desc == "FK CONSTRAINT":
            r = _REFERENCES_RE.search(statement)
            if not r:
                continue
            refs = _unquote_qualified(r.group("qual"))
        items.append(PostItem(entry, _unquote_qualified(m.group("qual")), statement, refs))
    if len([i for i in items if i.references is None]) < len(
            [e for e in wanted if e.desc != "FK CONSTRAINT"]):
        # an index or key we could not read goes to the final pg_restore; a foreign key may
        # need it, so every foreign key goes there too (pg_restore orders them after it)
        items = [i for i in items if i.references is None]
    return items, session
