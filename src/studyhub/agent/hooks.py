"""The agent's hooks (alerts, metrics). Stub: none yet; their owner's version wins."""

from __future__ import annotations

from pathlib import Path

from studyhub.agent.config import AgentConfig
from studyhub.agent.events import AgentHooks


def build_hooks(config: AgentConfig, state_dir: Path) -> list[AgentHooks]:
    return []
