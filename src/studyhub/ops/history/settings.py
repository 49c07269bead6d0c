"""``[agent.history]`` of studyhub.toml: how often the agent samples activity and how much of
it it keeps (docs/agent-history.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HistorySettings(BaseModel):
    """``sample_every_s``: seconds between activity samples; ``retention_days``: snapshots
    older than this are deleted; ``max_size_mib``: then the oldest go until the history's
    estimated live size is under this many MiB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_every_s: float = Field(10.0, ge=1.0, le=3600.0)
    retention_days: float = Field(14.0, gt=0, le=3660)
    max_size_mib: float = Field(2048.0, gt=0)
