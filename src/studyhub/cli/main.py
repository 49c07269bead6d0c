"""The ``studyhub`` command: a thin layer mapping arguments onto ops functions and rendering
their typed results."""

from __future__ import annotations

import sys

import typer
from rich.text import Text

from studyhub.cli import agent as agent_cli
from studyhub.cli import backup as backup_cli
from studyhub.cli import cluster as cluster_cli
from studyhub.cli import dashboard as dashboard_cli
from studyhub.cli import local as local_cli
from studyhub.cli import migrate as migrate_cli
from studyhub.cli import profiles as profiles_cli
from studyhub.cli import diag as diag_cli
from studyhub.cli import privacy as privacy_cli
from studyhub.cli import emergency as emergency_cli
from studyhub.cli import seed as seed_cli
from studyhub.cli import top as top_cli
from studyhub.cli import serve as serve_cli
from studyhub.cli.common import err_console
from studyhub.errors import StudyhubError

app = typer.Typer(
    help="StudyHub: the app's data layer and the database runbook as safe, tested commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(local_cli.app, name="local")
app.add_typer(migrate_cli.app, name="migrate")
app.add_typer(diag_cli.app, name="diag")
app.add_typer(backup_cli.app, name="backup")
app.add_typer(privacy_cli.app, name="privacy")
app.add_typer(emergency_cli.app, name="emergency")
app.add_typer(cluster_cli.app, name="cluster")
app.add_typer(agent_cli.app, name="agent")
app.command("profiles")(profiles_cli.profiles)
app.command("seed")(seed_cli.seed)
app.command("top")(top_cli.top)
app.command("serve")(serve_cli.serve)
app.command("dashboard")(dashboard_cli.dashboard)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear error line and a non-zero exit for every StudyhubError."""
    try:
        app(args=argv, prog_name="studyhub")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except StudyhubError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print(Text("interrupted", style="bold red"))
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
