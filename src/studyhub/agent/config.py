"""STUB (helper C): the part of helper A's studyhub/agent/config.py that build_hooks reads,
with the plan's field names; A's version replaces this file at merge."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from studyhub.agent.metrics import MetricsSettings
from studyhub.ops.alerts.settings import AlertSettings


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "agent"
    profiles: list[str] = ["local"]
    heartbeat_every_s: float = 15
    jobs: dict[str, Any] = {}
    history: Any = None
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings = MetricsSettings()
