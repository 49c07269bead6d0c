"""``[agent.alerts]`` in studyhub.toml (stub; the alerts package's own version wins)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repeat_every_s: float = 3600
