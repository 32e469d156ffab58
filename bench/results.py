"""What a benchmark run measured: one row per system and configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

# Row keys the ratios and targets refer to.
TF_B1 = "transformers-b1"
TF_B16 = "transformers-batch"
OFFLOAD_B1 = "offload-b1"
AIRLLM_B1 = "airllm-b1"
LS_PART_1 = "layerstream-part-1"
LS_PART_MANY = "layerstream-part-many"
LS_FULL_1 = "layerstream-full-1"
LS_FULL_MANY = "layerstream-full-many"


@dataclass
class Row:
    key: str
    system: str
    config: str
    streams: int
    completion_tokens: int | None = None
    wall_s: float | None = None
    ttft_s: float | None = None
    peak_rss_bytes: int | None = None
    peak_anon_bytes: int | None = None
    text: str | None = None
    # The --max-memory value the server accepted; None when none was applied.
    max_memory: str | None = None
    note: str = ""
    error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if self.error or not self.completion_tokens or not self.wall_s:
            return None
        return self.completion_tokens / self.wall_s


@dataclass(frozen=True)
class Limits:
    """This machine's physical limits and the roofline they give the model."""

    weight_bytes: int  # in the compute dtype, read once per sweep
    parameters: int
    memory_copy_bytes_per_s: float  # read plus write bytes
    page_cache_read_bytes_per_s: float
    matmul_flops_per_s: float

    def roofline_tokens_per_s(self, streams: int) -> float:
        """Tokens/s if a sweep cost only its memory traffic (and, batched, its math)."""
        seconds = self.weight_bytes / self.memory_copy_bytes_per_s
        if streams > 1:
            seconds += 2 * self.parameters * streams / self.matmul_flops_per_s
        return streams / seconds


@dataclass
class Report:
    model: str
    tokens: int
    streams: int
    rows: list[Row] = field(default_factory=list)
    limits: Limits | None = None
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    # The rounds this report combines (see ``combine``); empty for one round.
    rounds: list[Report] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((row for row in self.rows if row.key == key), None)

    def tokens_per_s(self, key: str) -> float | None:
        row = self.row(key)
        return None if row is None else row.tokens_per_s


def combine(rounds: list[Report]) -> Report:
    """One report of a run's rounds: each row its median round by speed.

    Its peak memory is the highest of its rounds. The rounds stay in the
    report, so that each target can take the median of its rounds' own
    ratios, each measured minutes apart at most.
    """
    if len(rounds) == 1:
        return rounds[0]
    first = rounds[0]
    combined = replace(first, rows=[], notes=list(first.notes), rounds=rounds)
    keys = dict.fromkeys(row.key for report in rounds for row in report.rows)
    for key in keys:
        rows = [row for report in rounds if (row := report.row(key)) is not None]
        combined.rows.append(_median_row(rows))
    combined.notes.append(
        f"{len(rounds)} rounds: each row is its median round, each target the "
        "median of its rounds' ratios"
    )
    return combined


def _median_row(rows: list[Row]) -> Row:
    measured = sorted(
        (row for row in rows if row.tokens_per_s is not None),
        key=lambda row: row.tokens_per_s,
    )
    if len(rows) == 1 or not measured:
        return rows[0]
    middle = measured[(len(measured) - 1) // 2]
    note = f"median of {len(measured)} rounds"
    return replace(
        middle,
        note=f"{middle.note}; {note}" if middle.note else note,
        peak_rss_bytes=_highest(row.peak_rss_bytes for row in rows),
        peak_anon_bytes=_highest(row.peak_anon_bytes for row in rows),
    )


def _highest(values) -> int | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def row_as_dict(row: Row) -> dict[str, Any]:
    return {**asdict(row), "tokens_per_s": row.tokens_per_s}
