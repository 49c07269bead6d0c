"""Where StudyHub keeps its local state."""

from __future__ import annotations

import os
from pathlib import Path


def studyhub_home() -> Path:
    """``$STUDYHUB_HOME`` or ``.studyhub/`` in the working directory, as an absolute path."""
    raw = os.environ.get("STUDYHUB_HOME")
    return (Path(raw) if raw else Path.cwd() / ".studyhub").absolute()
