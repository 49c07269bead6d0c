"""Running PostgreSQL's programs as the right OS user, and finding them; the servers'
processes (which postmaster serves a data directory, start and stop one, after a crash too).

PostgreSQL's server, initdb and pgbouncer refuse to run as root. When we are root they run as
the ``postgres`` OS user through ``runuser``; otherwise as ourselves. Credentials never go on a
command line: callers put ``PGPASSFILE``/``PGPASSWORD`` in the child's environment.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from studyhub.atomic_file import write_atomically
from studyhub.environ import inherited_environ
from studyhub.errors import LocalClusterError

PG_MAJOR = 15

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class ServerUser:
    name: str
    uid: int
    gid: int

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()


def server_user() -> ServerUser:
    """The OS user that owns and runs the local servers."""
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(os.environ.get("STUDYHUB_SERVER_USER", "postgres"))
        except KeyError:
            raise LocalClusterError(
                "running as root, but there is no 'postgres' OS user to run the server as; "
                "install postgresql-15 (it creates one) or run as an ordinary user"
            ) from None
        return ServerUser(pw.pw_name, pw.pw_uid, pw.pw_gid)
    pw = pwd.getpwuid(os.geteuid())
    return ServerUser(pw.pw_name, pw.pw_uid, pw.pw_gid)


def pg_bindir() -> Path:
    """Directory of the PostgreSQL 15 server programs."""
    raw = os.environ.get("STUDYHUB_PG_BINDIR")
    candidates = [Path(raw)] if raw else [Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")]
    if not raw:
        pg_config = shutil.which("pg_config")
        if pg_config:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
            if out.returncode == 0:
                candidates.append(Path(out.stdout.strip()))
    for c in candidates:
        if (c / "postgres").is_file() and (c / "initdb").is_file():
            return c
    raise LocalClusterError(
        f"PostgreSQL {PG_MAJOR} server programs not found (looked in "
        f"{', '.join(map(str, candidates))}); run scripts/bootstrap.sh or "
        f"apt-get install postgresql-{PG_MAJOR}"
    )


def pg_program(name: str) -> Path:
    path = pg_bindir() / name
    if not path.is_file():
        raise LocalClusterError(f"{name} not found in {path.parent}; install postgresql-{PG_MAJOR}")
    return path


def pgbouncer_program() -> Path:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").is_file() else None
    )
    if not found:
        raise LocalClusterError(
            "pgbouncer not found; run scripts/bootstrap.sh or apt-get install pgbouncer"
        )
    return Path(found)


def as_server_user(argv: list[str]) -> list[str]:
    user = server_user()
    if user.is_self:
        return argv
    return ["runuser", "-u", user.name, "--", *argv]


def run_server_cmd(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float | None = 120,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the server user; on failure raise with its last stderr line."""
    full_env = inherited_environ()  # no secrets into the server user's processes
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            as_server_user(argv),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise LocalClusterError(f"{what or Path(argv[0]).name} timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit code {proc.returncode}"
        raise LocalClusterError(f"{what or Path(argv[0]).name} failed: {last}")
    return proc


def chown_to_server(path: Path | int) -> None:
    """Give a path (or an open file descriptor) to the server user."""
    user = server_user()
    if not user.is_self:
        if isinstance(path, int):
            os.fchown(path, user.uid, user.gid)
        else:
            os.chown(path, user.uid, user.gid)


def write_private(path: Path, text: str, *, server_owned: bool = False) -> None:
    """Write a 0600 file atomically (created with 0600, never briefly world-readable); with
    ``server_owned`` it belongs to the server user before it appears under its name."""

    def write(f: BinaryIO) -> None:
        f.write(text.encode())
        if server_owned:
            chown_to_server(f.fileno())

    write_atomically(path, write, mode=0o600, overwrite=True)


def server_user_can_reach(path: Path) -> Path | None:
    """The first ancestor of ``path`` that the server user cannot traverse, or None."""
    user = server_user()
    if user.is_self:
        return None
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            break
        st = parent.stat()
        if st.st_uid == user.uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == user.gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return parent
    return None


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def process_exe_name(pid: int) -> str | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return None


def pids_with_cwd(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` (PostgreSQL backends chdir to PGDATA)."""
    target = directory.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            if process_cwd(int(entry.name)) == target:
                found.append(int(entry.name))
    return found


# ------------------------------------------------------------------ server processes
def postmaster_pid(datadir: Path) -> int | None:
    """PID of a live postmaster serving ``datadir``; clears a stale postmaster.pid."""
    pidfile = datadir / "postmaster.pid"
    try:
        first = pidfile.read_text().splitlines()[0]
        pid = int(first)
    except (FileNotFoundError, IndexError, ValueError):
        return None
    if process_exe_name(pid) == "postgres" and process_cwd(pid) == datadir.resolve():
        return pid
    return None


def clear_crash_leftovers(datadir: Path, progress: Progress) -> None:
    """After a crash: kill orphaned backends of a dead postmaster, drop its stale pid file."""
    pidfile = datadir / "postmaster.pid"
    orphans = [p for p in pids_with_cwd(datadir) if process_exe_name(p) == "postgres"]
    if orphans:
        progress(f"killing {len(orphans)} orphaned server process(es) of a crashed postmaster")
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            process_cwd(p) is not None for p in orphans
        ):
            time.sleep(0.05)
    if pidfile.exists():
        progress(f"removing stale {pidfile.name}")
        pidfile.unlink()


def start_postgres(datadir: Path, log: Path, name: str, progress: Progress) -> None:
    """Start the server of ``datadir`` (logging to ``log``) unless it runs; wait until it
    accepts connections."""
    if postmaster_pid(datadir):
        return
    clear_crash_leftovers(datadir, progress)
    progress(f"starting {name}")
    result = run_server_cmd(
        [str(pg_program("pg_ctl")), "-D", str(datadir), "-l", str(log), "-w",
         "-t", "120", "start"],
        check=False,
        timeout=180,
    )
    if result.returncode != 0 or not postmaster_pid(datadir):
        raise LocalClusterError(f"{name} did not start: {last_log_error(log)}")


def last_log_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log written"
    for line in reversed(lines[-50:]):
        if "FATAL" in line or "ERROR" in line or "PANIC" in line:
            return line.split(" ", 3)[-1] + f" (see {log})"
    return (lines[-1] if lines else "no log output") + f" (see {log})"


def stop_postgres(datadir: Path) -> bool:
    """Fast shutdown of the server of ``datadir``; False if it was not running."""
    if not postmaster_pid(datadir):
        return False
    run_server_cmd(
        [str(pg_program("pg_ctl")), "-D", str(datadir), "-m", "fast", "-w", "-t",
         "60", "stop"],
        timeout=90,
    )
    return True


def pgbouncer_pid(pidfile: Path) -> int | None:
    """PID of the running PgBouncer that wrote ``pidfile``, or None."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if process_exe_name(pid) == "pgbouncer" else None
