"""The task list's speed targets, each judged PASS or MISS from one run's rows.

Targets compare layerstream with a quarter of the weights' bytes as its memory
budget ("part") unless they say otherwise: holding less than the whole model
is the point of the product.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.results import (
    AIRLLM_B1,
    LS_FULL_1,
    LS_PART_1,
    LS_PART_MANY,
    TF_B1,
    TF_B16,
    Report,
    ratio,
)


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None  # the ratio found, None when a row is missing
    goal: float
    note: str = ""

    @property
    def status(self) -> str:
        if self.measured is None:
            return "n/a"
        return "PASS" if self.measured >= self.goal else "MISS"


def evaluate(report: Report) -> list[Target]:
    many = report.streams
    return [
        _speedup(
            report,
            "one stream ≥ 1.2× transformers in memory, batch 1",
            LS_PART_1,
            TF_B1,
            1.2,
        ),
        _speedup(
            report,
            f"{many} streams ≥ 1.5× transformers, batch {many}",
            LS_PART_MANY,
            TF_B16,
            1.5,
        ),
        _speedup(
            report, f"{many} streams ≥ 6× our one stream", LS_PART_MANY, LS_PART_1, 6.0
        ),
        _budget_target(report),
        _speedup(
            report, "one stream ≥ 100× AirLLM, batch 1", LS_PART_1, AIRLLM_B1, 100.0
        ),
    ]


def _speedup(report: Report, name: str, ours: str, theirs: str, goal: float) -> Target:
    return Target(name, paired_ratio(report, ours, theirs), goal)


def paired_ratio(report: Report, ours: str, theirs: str) -> float | None:
    """The median of the rounds' own ratios (the report's own without rounds).

    A round that lacks one of the two rows (AirLLM runs in the first round
    only) is paired with the other's median row.
    """
    ratios = [
        ratio(
            each.tokens_per_s(ours) or report.tokens_per_s(ours),
            each.tokens_per_s(theirs) or report.tokens_per_s(theirs),
        )
        for each in report.rounds
    ]
    known = [value for value in ratios if value is not None]
    if not known:
        return ratio(report.tokens_per_s(ours), report.tokens_per_s(theirs))
    return statistics.median(known)


def _budget_target(report: Report) -> Target:
    name = "25% budget ≥ 0.9× all resident, one stream"
    part, full = report.row(LS_PART_1), report.row(LS_FULL_1)
    if part is None or full is None:
        return Target(name, None, 0.9)
    if part.max_memory is None or full.max_memory is None:
        return Target(name, None, 0.9, "the server applied no memory budget")
    return _speedup(report, name, LS_PART_1, LS_FULL_1, 0.9)
