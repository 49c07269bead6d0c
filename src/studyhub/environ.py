"""What a process we start inherits from ours: the ordinary environment (PATH, locale, TZ, HOME,
TERM, ...) but none of our settings and nothing that looks like a secret.

Without this, a `STUDYHUB_PRODUCTION_PASSWORD` or `DIGITALOCEAN_TOKEN` exported in the operator's
shell would travel into every pg_dump, psql and, through runuser, into the local PostgreSQL
servers, where another OS user (postgres) can read it in /proc/<pid>/environ. Callers add back
exactly what the child needs (the PG* settings of one connection, a passfile).
"""

from __future__ import annotations

import os
import re

_OURS = ("PG", "STUDYHUB_", "DIGITALOCEAN_", "PYDO_")
_SECRET_LIKE = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|DSN|AUTH|COOKIE|SESSION", re.I)


def inherited_environ() -> dict[str, str]:
    """``os.environ`` without PG*/STUDYHUB_*/DIGITALOCEAN_* settings and secret-looking names."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(_OURS) and not _SECRET_LIKE.search(k)}
