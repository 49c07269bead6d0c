"""Files and directories that are either complete or absent: written under a temporary name in
the same directory, fsynced, then renamed (or linked, when an existing file must not be
replaced) into place. The one write-temp-then-rename mechanism of the project:

``write_atomically(path, write)``
    a file written by ``write(f)`` (a callback that may stream: a zip, a ledger, a key);
``write_text_atomically`` / ``write_json_atomically``
    the same for a text or a JSON document (``indent=2``, a final newline);
``atomic_directory(path)``
    a directory built under a temporary name (by us or by a child program), fsynced file by
    file and renamed into place only when the ``with`` block succeeded;
``fsync_path`` / ``fsync_tree``
    the durability steps on their own; ``is_temporary(name, of)`` tells a leftover temporary
    file of ``write_atomically`` apart (e.g. to ignore it when listing a directory).

``before_rename`` (a callback given the temporary path, e.g. to chown it to the server's user)
runs after the data is fsynced and the mode set, before the rename makes it visible.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from studyhub.errors import StudyhubError

TEMP_SUFFIX = ".tmp"


def fsync_path(path: Path) -> None:
    """fsync one file or directory (a directory: its entries, e.g. after a rename in it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory bottom-up, then the parent of ``root``."""
    dirs = []
    for dirpath, _dirnames, filenames in os.walk(root):
        dirs.append(Path(dirpath))
        for name in filenames:
            fsync_path(Path(dirpath) / name)
    for d in reversed(dirs):
        fsync_path(d)
    fsync_path(Path(root).parent)


def is_temporary(name: str, of: str) -> bool:
    """Is ``name`` a temporary file of ``write_atomically`` for a file named ``of``?"""
    return name.startswith(f".{of}.") and name.endswith(TEMP_SUFFIX)


def write_atomically(path: Path, write: Callable[[BinaryIO], None], *, mode: int = 0o600,
                     overwrite: bool = False,
                     before_rename: Callable[[Path], None] | None = None) -> Path:
    """Run ``write(f)`` on a temporary file beside ``path`` (created 0600), fsync it and move it
    into place; on any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise StudyhubError(f"directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise StudyhubError(f"{path} already exists; choose another name (nothing was written)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if before_rename is not None:
            before_rename(Path(tmp))
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if someone created path meanwhile: never clobber
            except FileExistsError:
                raise StudyhubError(f"{path} already exists; nothing was written") from None
            os.unlink(tmp)
        fsync_path(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomically(path: Path, text: str, *, mode: int = 0o600, overwrite: bool = False,
                          before_rename: Callable[[Path], None] | None = None) -> Path:
    """``text`` (UTF-8) as the whole content of ``path``, atomically (``write_atomically``)."""
    data = text.encode()
    return write_atomically(path, lambda f: f.write(data), mode=mode, overwrite=overwrite,
                            before_rename=before_rename)


def write_json_atomically(path: Path, data: Any, *, mode: int = 0o600, overwrite: bool = False,
                          before_rename: Callable[[Path], None] | None = None) -> Path:
    """``data`` as indented JSON with a final newline (values JSON does not know, such as
    datetimes and paths, as their ``str``), atomically (``write_atomically``)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return write_text_atomically(path, text, mode=mode, overwrite=overwrite,
                                 before_rename=before_rename)


@contextmanager
def atomic_directory(path: Path, *, temp_name: str | None = None, mode: int = 0o700,
                     create: bool = True, fsync: bool = True) -> Iterator[Path]:
    """Build the directory ``path`` under a temporary name beside it; yields that temporary
    path. When the block succeeds, every file and directory in it is fsynced, it is renamed to
    ``path`` (refused if ``path`` appeared meanwhile) and the parent is fsynced; when the block
    (or any of that) fails, the temporary directory is removed and ``path`` is untouched.

    ``temp_name`` names the temporary directory (default ``.{name}.tmp``: a name that tells
    a leftover apart, e.g. one carrying the writer's PID); ``create=False`` leaves creating it
    to the block (e.g. a child program that insists on making its output directory)."""
    path = Path(path).absolute()
    tmp = path.with_name(temp_name or f".{path.name}{TEMP_SUFFIX}")
    if tmp == path:
        raise ValueError("the temporary name must differ from the final one")
    if create:
        tmp.mkdir(mode=mode)
    try:
        yield tmp
        if fsync:
            fsync_tree(tmp)
        if path.exists():
            raise StudyhubError(f"{path} already exists; nothing was written")
        os.rename(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
