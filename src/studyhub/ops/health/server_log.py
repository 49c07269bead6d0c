"""The server log: settings that copy data values (a unique violation's email, a failing
row, a statement's literals or bound parameters) into it, and how to undo each — what reaches
the log outlives an erasure (docs/privacy.md)."""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from studyhub.local import LOG_PRIVACY_SETTINGS
from studyhub.ops.health.registry import Check, CheckContext, check
from studyhub.profiles import Profile


def _disabled_ms(value: str) -> bool:
    """A duration threshold that logs nothing: -1 (0 logs every statement)."""
    return value.strip().startswith("-")


def _positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return True


def _on(value: str) -> bool:
    return value.strip().lower() in ("on", "true", "yes", "1", "t", "y")


# The settings log_value_leaks judges (read by get_log_value_settings.sql).
LOG_VALUE_SETTINGS = (
    "log_error_verbosity", "log_min_error_statement", "log_statement",
    "log_min_duration_statement", "log_min_duration_sample", "log_statement_sample_rate",
    "log_transaction_sample_rate", "log_parameter_max_length",
    "log_parameter_max_length_on_error", "debug_print_parse", "debug_print_rewritten",
    "debug_print_plan", "auto_explain.log_min_duration",
)


def log_value_leaks(settings: dict[str, str]) -> list[tuple[str, str]]:
    """(setting, what it lets into the server log) for each of ``settings`` (name → value as
    pg_settings shows it; absent names count as PostgreSQL's defaults) that copies data values —
    an email in a unique violation, a failing row, a statement's literals or bound parameters —
    into the log. Empty when none does."""
    s = {k: str(v).strip().lower() for k, v in settings.items()}
    terse = s.get("log_error_verbosity", "default") == "terse"
    sampled = (not _disabled_ms(s.get("log_min_duration_sample", "-1"))
               and _positive(s.get("log_statement_sample_rate", "1")))
    statements_logged = (s.get("log_statement", "none") != "none" or sampled
                         or not _disabled_ms(s.get("log_min_duration_statement", "-1"))
                         or _positive(s.get("log_transaction_sample_rate", "0")))
    found: list[tuple[str, str]] = []
    if not terse:
        found.append(("log_error_verbosity",
                      "DETAIL lines copy key values (a unique violation's email), failing rows "
                      "and deadlock reports' statements; CONTEXT lines a failed statement's "
                      "parameters"))
    if s.get("log_min_error_statement", "error") != "panic":
        found.append(("log_min_error_statement",
                      "a failed statement's text, literals included, follows the error as a "
                      "STATEMENT line"))
    if s.get("log_statement", "none") != "none":
        found.append(("log_statement", "statement texts are logged with their literals"))
    if not _disabled_ms(s.get("log_min_duration_statement", "-1")):
        found.append(("log_min_duration_statement",
                      "slow statements are logged with their texts"))
    if sampled:
        found.append(("log_min_duration_sample", "a sample of slow statements is logged with "
                                                 "their texts"))
    if _positive(s.get("log_transaction_sample_rate", "0")):
        found.append(("log_transaction_sample_rate",
                      "every statement of a sample of transactions is logged"))
    if statements_logged and s.get("log_parameter_max_length", "-1") != "0":
        found.append(("log_parameter_max_length",
                      "logged statements carry their bound parameter values"))
    if not terse and s.get("log_parameter_max_length_on_error", "0") != "0":
        found.append(("log_parameter_max_length_on_error",
                      "failed statements' bound parameter values are logged"))
    for name in ("debug_print_parse", "debug_print_rewritten", "debug_print_plan"):
        if not terse and _on(s.get(name, "off")):
            found.append((name, "query trees are logged with their constants"))
    if not _disabled_ms(s.get("auto_explain.log_min_duration", "-1")):
        found.append(("auto_explain.log_min_duration",
                      "auto_explain logs slow statements' texts with their plans"))
    return found


def _safe_log_value(name: str) -> str:
    return LOG_PRIVACY_SETTINGS.get(name, "off" if name.startswith("debug_print") else "-1")


# What DigitalOcean's database configuration API can set, in the form it takes.
DO_LOG_CONFIG = {"log_error_verbosity": "TERSE", "log_min_duration_statement": -1}


def _log_values_fix(profile: Profile | None, server: list[str], auto_conf: list[str],
                    resets: list[str]) -> str:
    """How to undo each finding: ``server`` settings from the configuration files (the
    provider's way), ``auto_conf`` ones from ALTER SYSTEM, ``resets`` for role/database ones."""
    parts = []
    if server and profile is not None and profile.is_local:
        parts.append("run `studyhub local up` (it writes the safe values into studyhub.conf and "
                     "reloads the servers)")
    elif server and profile is not None and profile.do_cluster_id:
        body = {n: v for n, v in DO_LOG_CONFIG.items() if n in server}
        if body:
            parts.append(f"PATCH /v2/databases/{profile.do_cluster_id}/config "
                         f"{{\"config\": {json.dumps(body)}}}")
        rest = [n for n in server if n not in DO_LOG_CONFIG]
        if rest:
            parts.append(f"DigitalOcean's API cannot set {', '.join(rest)}: keep values out of "
                         "statement texts (bind parameters) and see docs/privacy.md")
    elif server:
        parts.append(" ".join(f"ALTER SYSTEM SET {n} = '{_safe_log_value(n)}';" for n in server)
                     + " SELECT pg_reload_conf(); (as a superuser)")
    if auto_conf:
        parts.append(" ".join(f"ALTER SYSTEM RESET {n};" for n in auto_conf)
                     + " SELECT pg_reload_conf(); (as a superuser)")
    if resets:
        parts.append(" ".join(resets))
    return "; then ".join(parts)


# pg_settings sources that are per-role or per-database settings of this very session: judged
# from get_log_setting_overrides.sql (which sees them for every role), not as the server's.
SESSION_OVERRIDE_SOURCES = ("database", "user", "database user")


def _alter_target(conn: psycopg.Connection, role: str | None, database: str | None) -> str:
    """``ROLE x IN DATABASE y`` / ``ROLE x`` / ``DATABASE y`` / ``ROLE ALL``, names quoted."""
    def ident(name: str) -> str:
        return sql.Identifier(name).as_string(conn)

    if role is None and database is not None:
        return f"DATABASE {ident(database)}"
    target = f"ROLE {ident(role)}" if role is not None else "ROLE ALL"
    return target + (f" IN DATABASE {ident(database)}" if database is not None else "")


@check("server_log_values")
def server_log_values(ctx: CheckContext) -> Check:
    names = {"names": list(LOG_VALUE_SETTINGS)}
    rows = [r for r in ctx.rows("get_log_value_settings", names)
            if r["source"] not in SESSION_OVERRIDE_SOURCES]
    current = {r["name"]: r["setting"] for r in rows}
    set_by = {r["name"]: r["sourcefile"] or r["source"] for r in rows}
    items = [{"setting": name, "value": current.get(name), "safe": _safe_log_value(name),
              "why": why, "set_by": set_by.get(name, "default")}
             for name, why in log_value_leaks(current)]
    # ALTER SYSTEM wins over the configuration files: undone by ALTER SYSTEM RESET, except on
    # DigitalOcean, where only its configuration API sets server settings.
    managed = ctx.profile is not None and ctx.profile.do_cluster_id is not None
    auto_conf = [i["setting"] for i in items
                 if not managed and str(i["set_by"]).endswith("postgresql.auto.conf")]
    server = [i["setting"] for i in items if i["setting"] not in auto_conf]
    resets = []
    for o in ctx.rows("get_log_setting_overrides", names):
        leaks = dict(log_value_leaks({**current, o["name"]: o["setting"]}))
        if o["name"] not in leaks:
            continue
        target = _alter_target(ctx.conn, o["role"], o["database"])
        items.append({"setting": o["name"], "value": o["setting"],
                      "safe": _safe_log_value(o["name"]), "why": leaks[o["name"]],
                      "set_by": f"ALTER {target}"})
        resets.append(f"ALTER {target} RESET {o['name']};")
    return Check(
        "server_log_values", "Server log settings that copy data values into the log",
        "warn" if items else "ok",
        f"{len(items)}: " + ", ".join(dict.fromkeys(i["setting"] for i in items))
        if items else "none",
        "log_error_verbosity=terse, log_min_error_statement=panic, no statement or parameter "
        "logging",
        fix=_log_values_fix(ctx.profile, server, auto_conf, resets) if items else None,
        detail="what reaches the server log outlives an erasure (docs/privacy.md)"
        if items else None,
        items=items)
