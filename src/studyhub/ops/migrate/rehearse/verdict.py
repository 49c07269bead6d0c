"""The rehearsal's verdict: each measured statement against thresholds.

Defaults (``Thresholds``): no write blocked longer than 1 s, no ACCESS EXCLUSIVE lock held
longer than 1 s, no table rewrite of a table over 100 MB; overridden by ``[migrate.rehearse]``
in studyhub.toml (``max_blocked_write_s``, ``max_access_exclusive_s``,
``max_rewrite_table_bytes``), then by the caller (command-line flags).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from studyhub.errors import ConfigError
from studyhub.ops.migrate.rehearse.measure import Measurement, StatementMeasure

MB = 1024 * 1024


@dataclass
class Thresholds:
    max_blocked_write_s: float = 1.0
    max_access_exclusive_s: float = 1.0
    max_rewrite_table_bytes: int = 100 * MB


@dataclass
class StatementVerdict:
    revision: str
    index: int
    statement: str
    passed: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]  # every failing reason, "rev #n: reason"
    statements: list[StatementVerdict]

    @property
    def summary(self) -> str:
        failing = sum(1 for s in self.statements if not s.passed)
        return ("pass" if self.passed else "fail") + \
            f" ({len(self.statements)} statement(s), {failing} over a threshold or failed)"


def config_thresholds(path: Path | None = None) -> dict[str, Any]:
    """``[migrate.rehearse]`` of studyhub.toml ($STUDYHUB_CONFIG or ./studyhub.toml)."""
    raw = os.environ.get("STUDYHUB_CONFIG")
    path = path or (Path(raw) if raw else Path.cwd() / "studyhub.toml")
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: line {exc.lineno}") from None
    return dict((data.get("migrate") or {}).get("rehearse") or {})


def thresholds(overrides: dict[str, Any] | None = None, *, use_config: bool = True) -> Thresholds:
    """Defaults, then studyhub.toml's [migrate.rehearse], then ``overrides`` (None values are
    ignored). An unknown key or a negative value is a ConfigError."""
    known = {f.name: f.type for f in fields(Thresholds)}
    result = Thresholds()
    for source, values in (("studyhub.toml [migrate.rehearse]",
                            config_thresholds() if use_config else {}),
                           ("the command line", overrides or {})):
        for key, value in values.items():
            if value is None:
                continue
            if key not in known:
                raise ConfigError(f"{source}: unknown threshold {key!r}; known: "
                                  f"{', '.join(known)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{source}: {key} must be a number ≥ 0 (got {value!r})")
            result = replace(result, **{key: int(value) if key.endswith("_bytes") else
                                        float(value)})
    return result


def normalize_mode(mode: str | None) -> str | None:
    """'AccessExclusiveLock' (pg_locks) or 'ACCESS EXCLUSIVE' → 'ACCESS EXCLUSIVE'."""
    if not mode:
        return None
    text = mode.removesuffix("Lock")
    if " " not in text and not text.isupper():
        text = re.sub(r"(?<!^)(?=[A-Z])", " ", text)
    return text.upper()


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.1f} kB"


def _table_bytes(table: str, sizes: dict[str, int]) -> int | None:
    for key in (table, table.removeprefix("public."), f"public.{table}"):
        if key in sizes:
            return sizes[key]
    return None


def judge_statement(m: StatementMeasure, limits: Thresholds,
                    sizes: dict[str, int]) -> StatementVerdict:
    """One statement against the thresholds; ``sizes`` maps tables to their bytes before the
    migration (as measured on the fork)."""
    reasons = []
    if m.error:
        reasons.append(f"failed on the fork: {m.error}")
    if m.blocked_writes_max_s > limits.max_blocked_write_s:
        reasons.append(f"a write waited {m.blocked_writes_max_s:.2f} s behind it "
                       f"(limit {limits.max_blocked_write_s:g} s)")
    if (normalize_mode(m.lock_mode) == "ACCESS EXCLUSIVE" and m.lock_held_s is not None
            and m.lock_held_s > limits.max_access_exclusive_s):
        reasons.append(f"held ACCESS EXCLUSIVE on {m.lock_relation or '?'} for "
                       f"{m.lock_held_s:.2f} s (limit {limits.max_access_exclusive_s:g} s)")
    for table in m.rewrote:
        size = _table_bytes(table, sizes)
        if size is None or size > limits.max_rewrite_table_bytes:
            known = f"{_size(size)}" if size is not None else "size unknown"
            reasons.append(f"rewrote {table} ({known}; limit "
                           f"{_size(limits.max_rewrite_table_bytes)})")
    return StatementVerdict(m.revision, m.index, m.statement, not reasons, reasons)


def judge(measurement: Measurement, limits: Thresholds, sizes: dict[str, int]) -> Verdict:
    verdicts = [judge_statement(m, limits, sizes) for m in measurement.statements]
    if measurement.failed is not None and not any(
            v.index == measurement.failed.index and v.revision == measurement.failed.revision
            for v in verdicts):
        verdicts.append(judge_statement(measurement.failed, limits, sizes))
    reasons = [f"{v.revision} #{v.index}: {r}" for v in verdicts for r in v.reasons]
    return Verdict(not reasons, reasons, verdicts)
