"""``[agent.history]`` in studyhub.toml: how often the incident history samples and how long it
keeps what it sampled. (Stub of the history package's settings; its owner's version wins.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class HistorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_every_s: float = 10
    retention_days: float = 14
    max_size_mib: float = 2048
