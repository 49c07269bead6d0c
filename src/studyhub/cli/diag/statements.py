"""``diag statements enable``: turn pg_stat_statements on where it is missing (the runbook's
"enable once" step), with the plan shown, confirmation, ``--dry-run`` and an audit line."""

from __future__ import annotations

from rich.text import Text

from studyhub.cli.common import (
    DatabaseOpt,
    DryRunOpt,
    JsonOpt,
    ProfileOpt,
    YesOpt,
    confirm_destructive,
    console,
    print_json,
    profile_from,
)
from studyhub.ops import statements_enable as ops


def enable(
    profile: ProfileOpt = None,
    database: DatabaseOpt = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Enable pg_stat_statements in the database: CREATE EXTENSION (as the profile's admin);
    on a self-managed server whose shared_preload_libraries lacks it, also ALTER SYSTEM and the
    restart that needs (the local cluster's primary is restarted here; another server is left
    for you to restart). On DigitalOcean the provider preloads it: only CREATE EXTENSION.
    Already enabled: says so and changes nothing."""
    prof = profile_from(profile)
    plan = ops.plan_statements_enable(prof, database)
    if plan.already_enabled:
        if json_:
            print_json({"plan": plan, "result": None})
        else:
            console.print(f"pg_stat_statements is already enabled in {plan.database} on "
                          f"{prof.name} (installed and loaded); nothing to do")
        return
    if json_ and dry_run:
        print_json({"plan": plan, "result": None})
        return
    if not json_:
        console.print(Text.assemble(("enable pg_stat_statements", "bold"),
                                    f" in {plan.database} on {prof.name} ({plan.provider}):"))
        for step in plan.steps:
            console.print(f"  • {step}")
        for note in plan.notes:
            console.print(f"  ({note})")
        if dry_run:
            console.print("dry run: nothing was changed")
            return
    what = "restart the local primary and enable pg_stat_statements" \
        if plan.restart == "local" else "enable pg_stat_statements"
    confirm_destructive(prof, f"{what} in {plan.database}", yes=yes)
    result = ops.enable_statements(prof, plan)
    if json_:
        print_json({"plan": plan, "result": result})
        return
    if result.restart_pending:
        console.print(Text(f"shared_preload_libraries changed; restart the server of "
                           f"{plan.database} to load pg_stat_statements, then run this again "
                           f"to check", style="yellow"))
    elif result.enabled:
        console.print(Text.assemble(("pg_stat_statements is enabled", "green"),
                                    f" in {result.database}"
                                    + (" (primary restarted)" if result.restarted else "")))
    else:
        console.print(Text(f"pg_stat_statements is installed in {result.database} but not "
                           f"loaded yet", style="yellow"))
