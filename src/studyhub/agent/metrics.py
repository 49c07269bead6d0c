"""``[agent.metrics]``: the Prometheus endpoint's settings (stub; its owner's version wins)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9187
    token_file: str | None = None
