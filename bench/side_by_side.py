"""The main run: every system on one model, one after the other, in one process.

A stage that fails leaves a row with its error and the run goes on: one broken
anchor must not cost the others' figures.
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from bench.anchors import airllm_row, offload_row, transformers_rows
from bench.layerstream_run import Budget, layerstream_rows
from bench.model_size import ModelSize, measure_model
from bench.physical import measure_limits
from bench.results import Report, Row
from bench.server_process import ServerSpec

logger = logging.getLogger(__name__)

STAGES = ("limits", "transformers", "offload", "layerstream", "airllm")
_COMPUTE_ITEMSIZE = 4  # float32 on the CPU, for every system
_FULL_BUDGET_FACTOR = 2  # room beyond the weights for caches and buffers


@dataclass(frozen=True)
class RunOptions:
    folder: Path
    home: Path
    tokens: int
    streams: int
    budget_fraction: float
    memory_flag: str
    offload_max_memory: str
    airllm_python: str | None
    airllm_tokens: int
    skip: frozenset[str]
    timeout_s: float


def run_side_by_side(options: RunOptions) -> Report:
    size = measure_model(options.folder)
    report = Report(str(options.folder), options.tokens, options.streams)
    report.machine = machine_info()
    for stage, action in _stages(options, size, report).items():
        if stage in options.skip:
            report.notes.append(f"stage {stage} skipped")
            continue
        _run_stage(stage, action, report)
    return report


def budgets(weight_bytes: int, fraction: float) -> list[Budget]:
    part = f"{math.ceil(weight_bytes * fraction / 1e6)}MB"
    full = f"{math.ceil(weight_bytes * _FULL_BUDGET_FACTOR / 1e6)}MB"
    return [
        Budget("part", f"{fraction:.0%} of weights", part),
        Budget("full", "all resident", full),
    ]


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
    options: RunOptions, size: ModelSize, report: Report
) -> dict[str, Callable[[], list[Row]]]:
    o = options
    return {
        "limits": lambda: _limits(size, report),
        "transformers": lambda: transformers_rows(
            o.folder, o.tokens, o.streams, o.timeout_s
        ),
        "offload": lambda: [
            offload_row(o.folder, o.tokens, o.offload_max_memory, o.timeout_s)
        ],
        "layerstream": lambda: _layerstream(options, size),
        "airllm": lambda: [
            airllm_row(o.folder, o.airllm_python, o.airllm_tokens, o.timeout_s)
        ],
    }


def _limits(size: ModelSize, report: Report) -> list[Row]:
    report.limits = measure_limits(size, _COMPUTE_ITEMSIZE)
    return []


def _layerstream(options: RunOptions, size: ModelSize) -> list[Row]:
    rows = []
    weight_bytes = size.bytes_as(_COMPUTE_ITEMSIZE)
    for budget in budgets(weight_bytes, options.budget_fraction):
        spec = ServerSpec(
            options.folder,
            options.home,
            options.streams,
            budget.max_memory,
            options.memory_flag,
        )
        rows += layerstream_rows(
            spec, budget, options.tokens, options.streams, options.timeout_s
        )
    return rows


def _run_stage(stage: str, action: Callable[[], list[Row]], report: Report) -> None:
    logger.info("stage %s", stage)
    try:
        report.rows += action()
    # Any failure of one stage becomes its row; the traceback goes to the log.
    except Exception as error:  # noqa: BLE001
        logger.warning("stage %s failed", stage, exc_info=True)
        message = f"{type(error).__name__}: {error}"
        report.rows.append(Row(f"{stage}-failed", stage, "failed", 0, error=message))
