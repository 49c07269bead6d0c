"""Errors that reach the user as one clear line (the CLI prints ``str(err)`` and exits non-zero).

Messages never contain secrets: callers build them from names, ids and counts only.
"""


class StudyhubError(Exception):
    """A failure the operator can act on; its message is shown as is."""

    exit_code = 1


class ConfigError(StudyhubError):
    """A profile or setting is missing, malformed or unsafe."""


class LocalClusterError(StudyhubError):
    """The embedded PostgreSQL cluster could not be managed."""


class RefusedError(StudyhubError):
    """A safety rule refused the operation; nothing was changed."""
