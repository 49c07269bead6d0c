"""What every benchmark shares."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def bench_home(path: str | Path | None = None, prefix: str = "studyhub-bench-") -> Path:
    """The bench cluster's STUDYHUB_HOME: ``path`` (created if missing) or a new directory under
    /tmp. Mode 0755, so the postgres OS user can reach its data directory; exported as
    ``STUDYHUB_HOME`` for this process and the commands it starts."""
    home = Path(path) if path else Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    os.environ["STUDYHUB_HOME"] = str(home)
    return home
