"""Alerts (stub package: the alerts owner's version replaces it)."""

from studyhub.ops.alerts.settings import AlertSettings

__all__ = ["AlertSettings"]
