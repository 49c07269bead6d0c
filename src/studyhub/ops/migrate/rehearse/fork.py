"""The rehearsal's fork: made through the cluster backend (``cluster fork``'s machinery, audited
by ``apply_plan``), waited for until it accepts connections, and removed — always.

``remove_fork`` is the one place a rehearsal fork goes away. When it cannot (the API refuses,
the fork cannot be stopped), ``ForkNotRemovedError`` names the fork and the exact command that
removes it: on DigitalOcean a forgotten fork is billed until someone does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from datetime import datetime, timezone

from studyhub.audit import describe_error
from studyhub.connect import ConnectError, connect
from studyhub.ops.cluster import (
    ClusterBackend,
    ClusterOpError,
    Fork,
    Progress,
    apply_plan,
    check_name,
    fork_profile,
)
from studyhub.profiles import Profile


class ForkNotRemovedError(ClusterOpError):
    """The rehearsal's fork is still there. ``report`` is the rehearsal's report when the
    rehearsal itself got that far (None when it failed or was interrupted first)."""

    def __init__(self, message: str, *, fork: str, command: str, report: object = None) -> None:
        super().__init__(message)
        self.fork = fork
        self.command = command
        self.report = report


def fork_name(now: datetime | None = None) -> str:
    """``rehearse-YYYYMMDDtHHMMSS-xxxx``: DigitalOcean's naming rule, unique enough to never
    collide with an operator's fork or another rehearsal."""
    now = now or datetime.now(timezone.utc)
    return check_name(f"rehearse-{now.strftime('%Y%m%dt%H%M%S')}-{secrets.token_hex(2)}", "fork")


def remove_command(profile: Profile, name: str) -> str:
    return f"studyhub cluster forks remove {name} --profile {profile.name} --yes"


def remove_fork(backend: ClusterBackend, name: str, *, cause: BaseException | None = None
                ) -> str:
    """Remove the fork ``name`` if it exists; returns what happened ("removed", "destroyed",
    "never created"). Any failure → ``ForkNotRemovedError`` naming the fork and the command,
    and (``cause``) what went wrong before, so neither is lost."""
    profile = backend.profile
    command = remove_command(profile, name)
    try:
        if name not in {f.name for f in backend.forks()}:
            return "never created"
        plan = backend.fork_remove_plan(name)
        return apply_plan(backend, plan).status
    except BaseException as exc:  # also a second Ctrl-C: the fork must not be forgotten
        what = "DigitalOcean bills it until it is destroyed" if backend.provider != "local" \
            else "it keeps running and using disk"
        before = ""
        if cause is not None:
            before = ("the rehearsal was interrupted (Ctrl-C), then " if
                      isinstance(cause, KeyboardInterrupt) else
                      f"the rehearsal failed ({describe_error(cause)}), then ")
        raise ForkNotRemovedError(
            f"{before}the rehearsal's fork {name} could NOT be removed "
            f"({describe_error(exc)}); {what}. Remove it with: {command}",
            fork=name, command=command) from exc


def fork_target(source: Profile, fork: Fork) -> Profile:
    """How to reach the fork: the source's database, roles and TLS settings on its endpoint.
    Never protected: it is a throwaway copy that this rehearsal owns."""
    if not fork.port:
        raise ClusterOpError(f"fork {fork.name} is {fork.status} and has no port to connect to")
    target = fork_profile(source, f"fork {fork.name}", fork.host, fork.port)
    return replace(target, protected=False, explicit=True, read_only=False)


def wait_reachable(target: Profile, database: str | None, *, timeout_s: float,
                   poll_interval_s: float, progress: Progress) -> float:
    """Poll until the fork accepts the app role's connections; returns the seconds waited.
    ``ClusterOpError`` (with the last connection error) after ``timeout_s``."""
    started = time.monotonic()
    while True:
        progress(f"connecting to {target.name} ({target.host}:{target.port})")
        try:
            with connect(target, "app", database=database, autocommit=True, connect_timeout=5,
                         application_name="studyhub migrate rehearse") as conn:
                conn.execute("SELECT 1")
            return round(time.monotonic() - started, 3)
        except ConnectError as exc:
            if time.monotonic() - started > timeout_s:
                raise ClusterOpError(f"{target.name} cannot be reached after {timeout_s:.0f} s: "
                                     f"{exc}") from None
        time.sleep(poll_interval_s)
