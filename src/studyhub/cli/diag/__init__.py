"""``studyhub diag``: diagnostics. Read commands run as the ops role (pg_monitor: statistics and
catalogs, never app rows); ``explain``, ``advise`` and ``create-index`` need the app role (the
tables' owner) because they plan or change the app's own tables.

One module per group of commands: ``doctor``, ``queries`` (slow-queries, explain), ``incident``
(history), ``indexing`` (indexes, create-index, advise), ``statements`` (statements enable: as
the admin role), ``server`` (connections, locks, replication, sizes)."""

from __future__ import annotations

import typer

from studyhub.cli.diag import doctor, incident, indexing, queries, server, statements

app = typer.Typer(help="Diagnostics: health report, slow queries, indexes, locks, connections, "
                       "replication, sizes.", no_args_is_help=True)
app.command()(doctor.doctor)
app.command("slow-queries")(queries.slow_queries)
app.command("indexes")(indexing.indexes_cmd)
app.command("create-index")(indexing.create_index)
app.command()(server.connections)
app.command()(server.locks)
app.command("history")(incident.history)
app.command()(server.replication)
app.command()(server.sizes)
app.command()(queries.explain)
app.command()(indexing.advise)
statements_app = typer.Typer(help="pg_stat_statements: turn it on where it is missing.",
                             no_args_is_help=True)
statements_app.command("enable")(statements.enable)
app.add_typer(statements_app, name="statements")
