"""``studyhub profiles``: the configured profiles, secrets redacted."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from studyhub.cli.common import JsonOpt, console, print_json
from studyhub.profiles import list_profiles


def profiles(json_: JsonOpt = False) -> None:
    """List the profiles (local, staging, production) with where their passwords come from."""
    rows = list_profiles()
    if json_:
        print_json(rows)
        return
    table = Table(title="profiles", title_justify="left")
    for col in ("profile", "target", "sslmode", "app password", "notes"):
        table.add_column(col)
    for row in rows:
        name = row["name"] + (" *" if row.get("default") else "")
        if row.get("error"):
            table.add_row(name, "-", "-", "-", Text(row["error"], style="yellow"))
            continue
        target = f"{row['users']['app']}@{row['host']}:{row['port']}/{row['database']}"
        notes = []
        if row.get("protected"):
            notes.append("protected: destructive commands need --profile " + row["name"])
        if row.get("read_only"):
            notes.append("read-only")
        if row.get("pooler_port"):
            notes.append(f"pooler :{row['pooler_port']}")
        for r in row.get("replicas") or []:
            notes.append(f"replica {r['name']} {r['host']}:{r['port']}"
                         + (f" ({r['region']})" if r.get("region") else ""))
        table.add_row(name, target, row["sslmode"], row["passwords"]["app"], "; ".join(notes))
    console.print(table)
    console.print("* default profile (STUDYHUB_PROFILE)")
