"""The anchors' rows: transformers in memory, with disk offload, and AirLLM.

Each measurement runs ``generate_worker`` in a process of its own, so that its
peak memory is its own and a crash or a hang ends only that stage.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import generate_worker
from bench.memory import MemoryWatch
from bench.prompt import chat_messages, many_variants, solo_variants
from bench.results import AIRLLM_B1, OFFLOAD_B1, TF_B1, TF_B16, Row

logger = logging.getLogger(__name__)

_WORKER = Path(generate_worker.__file__)
_TAIL_LINES = 3


# The chats of a measurement: per timed run, one chat per batch row.
Runs = tuple[tuple[tuple[dict[str, str], ...], ...], ...]


class WorkerFailed(Exception):
    pass


@dataclass(frozen=True)
class WorkerSpec:
    backend: str  # transformers, offload or airllm
    folder: str
    batch: int
    tokens: int
    warmup_tokens: int
    runs: Runs
    max_memory: str | None = None
    offload_folder: str | None = None


def transformers_rows(
    folder: Path, tokens: int, batch: int, timeout_s: float
) -> list[Row]:
    rows = []
    for key, size in ((TF_B1, 1), (TF_B16, batch)):
        row = Row(key, "transformers", f"in memory, batch {size}", size)
        runs = _solo_runs() if size == 1 else (_batch(many_variants(size)),)
        spec = _spec("transformers", folder, runs, tokens)
        rows.append(_measure(row, sys.executable, spec, timeout_s))
    return rows


def offload_row(folder: Path, tokens: int, max_memory: str, timeout_s: float) -> Row:
    config = f"disk offload, max_memory {max_memory}, batch 1"
    row = Row(OFFLOAD_B1, "transformers + accelerate", config, 1)
    with tempfile.TemporaryDirectory(prefix="bench-offload-") as scratch:
        spec = _spec(
            "offload",
            folder,
            _solo_runs()[:1],  # at a few tokens/s, one run is enough to tell
            tokens,
            max_memory=max_memory,
            offload_folder=scratch,
        )
        return _measure(row, sys.executable, spec, timeout_s)


def airllm_row(folder: Path, python: str | None, tokens: int, timeout_s: float) -> Row:
    row = Row(AIRLLM_B1, "AirLLM 4.0.0", f"CPU float32, batch 1, {tokens} tokens", 1)
    if python is None:
        row.error = "skipped: no --airllm-python given"
        return row
    with tempfile.TemporaryDirectory(prefix="bench-airllm-") as scratch:
        # AirLLM writes a per-layer copy (splitted_model/) into the model folder.
        copy = Path(scratch) / folder.name
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("splitted_model"))
        # No warm-up: at a few seconds per token it would double the stage.
        spec = _spec("airllm", copy, _solo_runs()[:1], tokens, warmup_tokens=0)
        row = _measure(row, python, spec, timeout_s)
    row.note = "fewer tokens and no warm-up: AirLLM runs at about 0.1 tokens/s"
    return row


def _batch(variants: range) -> tuple[tuple[dict[str, str], ...], ...]:
    return tuple(tuple(chat_messages(variant)) for variant in variants)


def _solo_runs() -> Runs:
    """One stream, once per solo prompt, as layerstream's one-stream rows."""
    return tuple(_batch(range(variant, variant + 1)) for variant in solo_variants())


def _spec(
    backend: str,
    folder: Path,
    runs: Runs,
    tokens: int,
    warmup_tokens: int = 2,
    **extra: Any,
) -> WorkerSpec:
    batch = len(runs[0])
    return WorkerSpec(backend, str(folder), batch, tokens, warmup_tokens, runs, **extra)


def _measure(row: Row, python: str, spec: WorkerSpec, timeout_s: float) -> Row:
    logger.info("measuring %s, %s", row.system, row.config)
    try:
        result, anon = run_worker(python, spec, timeout_s)
    except (WorkerFailed, OSError) as error:
        row.error = str(error)
        return row
    row.completion_tokens = result["completion_tokens"]
    row.wall_s = result["wall_s"]
    row.ttft_s = result["ttft_s"]
    row.peak_rss_bytes = result["peak_rss_bytes"]
    row.peak_anon_bytes = anon
    row.text = result["text"]
    if len(spec.runs) > 1:
        row.note = f"median of {len(spec.runs)} runs"
    return row


def run_worker(
    python: str, spec: WorkerSpec, timeout_s: float
) -> tuple[dict[str, Any], int | None]:
    """The worker's result and its highest anonymous memory seen."""
    # -I: the script's folder must not shadow packages of the other environment.
    command = [python, "-I", str(_WORKER), json.dumps(asdict(spec))]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        with MemoryWatch(process.pid) as watch:
            code = _wait(process, timeout_s)
            anon = watch.peaks().anon_bytes
        out.seek(0)
        err.seek(0)
        return _result(out.read(), err.read(), code, timeout_s), anon


def _wait(process: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def _result(stdout: str, stderr: str, code: int | None, timeout_s: float) -> dict:
    if code is None:
        raise WorkerFailed(f"timed out after {timeout_s:.0f} s")
    for line in reversed(stdout.splitlines()):
        if line.startswith(generate_worker.RESULT_PREFIX):
            return json.loads(line.removeprefix(generate_worker.RESULT_PREFIX))
    tail = " / ".join(stderr.strip().splitlines()[-_TAIL_LINES:])
    raise WorkerFailed(f"exit {code}: {tail or 'no result'}")
