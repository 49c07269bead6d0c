"""Files that are either complete or absent: written to a temporary file in the same directory,
fsynced, then renamed (or linked, when an existing file must not be replaced) into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from studyhub.errors import StudyhubError


def write_atomically(path: Path, write: Callable[[BinaryIO], None], *, mode: int = 0o600,
                     overwrite: bool = False) -> Path:
    """Run ``write(f)`` on a temporary file beside ``path`` (created 0600), fsync it and move it
    into place; on any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise StudyhubError(f"directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise StudyhubError(f"{path} already exists; choose another name (nothing was written)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if someone created path meanwhile: never clobber
            except FileExistsError:
                raise StudyhubError(f"{path} already exists; nothing was written") from None
            os.unlink(tmp)
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
