"""The main run: every system on one model, one after the other, in one process.

A stage that fails leaves a row with its error and the run goes on: one broken
anchor must not cost the others' figures.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import transformers

from bench.anchors import airllm_row, offload_row, transformers_rows
from bench.layerstream_run import Setup, layerstream_rows
from bench.model_size import ModelSize, kv_bytes_per_token, measure_model
from bench.physical import measure_limits
from bench.prompt import prompt_length
from bench.results import Report, Row, combine
from bench.server_process import Budget, ServerSpec
from engine.store import export_plain

logger = logging.getLogger(__name__)

STAGES = ("limits", "transformers", "offload", "layerstream", "airllm")
# Stages run again in every round: the ones the close targets compare.
REPEATED = ("transformers", "layerstream")
_COMPUTE_ITEMSIZE = 4  # float32 on the CPU, for every system
_FULL_FACTOR = 2  # all resident: twice the weights leaves room for buffers
_KV_SLACK_TOKENS = 16


@dataclass(frozen=True)
class RunOptions:
    folder: Path
    home: Path
    tokens: int
    streams: int
    budget_fraction: float
    offload_max_memory: str
    airllm_python: str | None
    airllm_tokens: int
    skip: frozenset[str]
    timeout_s: float
    rounds: int = 1


def run_side_by_side(options: RunOptions) -> Report:
    """Every stage once, then transformers and layerstream again, round by round.

    This machine's speed drifts by a fifth within minutes; rounds that each
    measure both sides let a target take the median of paired ratios.
    """
    size = measure_model(options.folder)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as scratch:
        # transformers and AirLLM read plain weights only; the engine's store
        # may hold them in its kernel's blocked order.
        plain = export_plain(options.folder, Path(scratch) / options.folder.name)
        for index in range(options.rounds):
            wanted = STAGES if index == 0 else REPEATED
            logger.info("round %d of %d", index + 1, options.rounds)
            rounds.append(_round(options, plain, size, wanted))
    return combine(rounds)


def _round(
    options: RunOptions, plain: Path, size: ModelSize, wanted: tuple[str, ...]
) -> Report:
    report = Report(str(options.folder), options.tokens, options.streams)
    report.machine = machine_info()
    for stage, action in _stages(options, plain, size, report).items():
        if stage in options.skip:
            report.notes.append(f"stage {stage} skipped")
        elif stage in wanted:
            _run_stage(stage, action, report)
    return report


def setups(options: RunOptions, weight_bytes: int, kv_bytes: int) -> list[Setup]:
    """The small budget and the all-resident one, each with the run's KV cache.

    The budget flag covers weights and KV cache together; the KV cache the run
    needs is added on top so that "a quarter" is a quarter of the weights.
    """
    fraction = options.budget_fraction
    part = Budget(_megabytes(weight_bytes * fraction + kv_bytes), _megabytes(kv_bytes))
    full = replace(part, max_memory=_megabytes(weight_bytes * _FULL_FACTOR + kv_bytes))
    return [
        _setup(options, "part", f"{fraction:.0%} of weights + KV", part),
        _setup(options, "full", "all resident", full),
    ]


def run_kv_bytes(options: RunOptions) -> int:
    """KV cache for every stream's prompt and completion, with some slack."""
    per_stream = prompt_length(options.folder) + options.tokens + _KV_SLACK_TOKENS
    per_token = kv_bytes_per_token(options.folder, _COMPUTE_ITEMSIZE)
    return options.streams * per_stream * per_token


def machine_info() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def _stages(
    options: RunOptions, plain: Path, size: ModelSize, report: Report
) -> dict[str, Callable[[], list[Row]]]:
    folder, tokens, timeout_s = plain, options.tokens, options.timeout_s
    offload_memory, airllm = options.offload_max_memory, options.airllm_python
    return {
        "limits": lambda: _limits(size, report),
        "transformers": lambda: transformers_rows(
            folder, tokens, options.streams, timeout_s
        ),
        "offload": lambda: [offload_row(folder, tokens, offload_memory, timeout_s)],
        "layerstream": lambda: _layerstream(options, size),
        "airllm": lambda: [
            airllm_row(folder, airllm, options.airllm_tokens, timeout_s)
        ],
    }


def _limits(size: ModelSize, report: Report) -> list[Row]:
    report.limits = measure_limits(size, _COMPUTE_ITEMSIZE)
    return []


def _layerstream(options: RunOptions, size: ModelSize) -> list[Row]:
    weight_bytes = size.bytes_as(_COMPUTE_ITEMSIZE)
    rows = []
    for setup in setups(options, weight_bytes, run_kv_bytes(options)):
        rows += layerstream_rows(
            setup, options.tokens, options.streams, options.timeout_s
        )
    return rows


def _setup(options: RunOptions, name: str, label: str, budget: Budget) -> Setup:
    spec = ServerSpec(options.folder, options.home, options.streams, budget)
    return Setup(name, f"{label} ({budget.max_memory})", spec)


def _megabytes(count: float) -> str:
    return f"{math.ceil(count / 1e6)}MB"


def _run_stage(stage: str, action: Callable[[], list[Row]], report: Report) -> None:
    logger.info("stage %s", stage)
    try:
        report.rows += action()
    # Any failure of one stage becomes its row; the traceback goes to the log.
    except Exception as error:
        logger.warning("stage %s failed", stage, exc_info=True)
        message = f"{type(error).__name__}: {error}"
        report.rows.append(Row(f"{stage}-failed", stage, "failed", 0, error=message))
