"""``studyhub seed``: realistic, deterministic demo data (placeholder until the seeder lands)."""

from __future__ import annotations

import typer


def seed() -> None:
    """Seed demo data."""
    raise typer.Exit(0)
