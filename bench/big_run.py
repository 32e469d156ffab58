"""``--big``: serve a random Llama larger than memory with a small budget.

Writes the model (unless a complete one is already in ``--big-dir``), measures
the disk's read rate with the files' pages evicted from the page cache, then
serves a few tokens with every page of the model evicted, and sets the time
per sweep against the time to read the streamed bytes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.big_model import LlamaShape, write_random_llama
from bench.http_load import LOAD_ERRORS, run_load
from bench.memory import MemoryWatch
from bench.model_size import INDEX_FILE, weight_files
from bench.physical import (
    cold_read_bandwidth,
    drop_file_cache,
    matmul_rate,
    page_cache_read_bandwidth,
)
from bench.server_process import (
    Budget,
    Residency,
    ServerFailed,
    ServerSpec,
    fetch_residency,
    start_server,
)

logger = logging.getLogger(__name__)

_DISK_MARGIN_BYTES = 2 * 1024**3
_COMPUTE_ITEMSIZE = 4  # the server computes in float32 on the CPU
_IN_FLIGHT_LAYERS = 3
_PROMPT_ALLOWANCE = 64  # tokens: the prompt and some slack


class NotEnoughDisk(Exception):
    pass


@dataclass(frozen=True)
class BigOptions:
    shape: LlamaShape  # with the tokenizer's vocabulary
    dtype: torch.dtype
    tokenizer_folder: Path
    home: Path
    folder: Path | None  # kept and reused when given
    tokens: int
    budget: Budget
    timeout_s: float


@dataclass
class BigReport:
    shape: LlamaShape
    dtype: str
    folder: str
    file_bytes: int = 0
    streamed_bytes: int = 0  # decoder layers as stored: read once per sweep
    write_s: float | None = None
    cold_read_bytes_per_s: float | None = None
    cold_read_method: str = ""
    page_cache_read_bytes_per_s: float | None = None
    matmul_flops_per_s: float | None = None
    max_memory: str | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    wall_s: float | None = None
    peak_rss_bytes: int | None = None
    peak_anon_bytes: int | None = None
    memory_bytes: int | None = None  # the machine's, page cache included
    disk_read_bytes: int | None = None  # what the server read from storage, all sweeps
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def later_sweep_s(self) -> float | None:
        """Mean seconds of the sweeps after the prompt's: one new token each.

        The first sweep (the time to first token) reads every layer from the
        disk and runs the whole prompt; the later ones find in the page cache
        whatever of the model it could keep.
        """
        tokens, first = self.completion_tokens, self.ttft_s
        if not tokens or tokens < 2 or first is None or self.wall_s is None:
            return None
        return (self.wall_s - first) / (tokens - 1)

    @property
    def fits_page_cache(self) -> bool | None:
        """Whether this machine's memory could keep every streamed layer cached."""
        if self.memory_bytes is None:
            return None
        return self.streamed_bytes < self.memory_bytes


def run_big(options: BigOptions) -> BigReport:
    shape = options.shape
    with _model_folder(options) as folder:
        report = BigReport(
            shape, str(options.dtype).removeprefix("torch."), str(folder)
        )
        _ensure_model(folder, options, report)
        files = weight_files(folder)
        report.file_bytes = sum(path.stat().st_size for path in files)
        report.streamed_bytes = (
            shape.layers * shape.layer_parameters * _itemsize(options.dtype)
        )
        _measure_reading(files, report)
        report.memory_bytes = machine_memory_bytes()
        _serve(folder, options, report)
    return report


def machine_memory_bytes() -> int | None:
    """MemTotal: all the page cache could ever hold, and more."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def storage_read_bytes(pid: int) -> int | None:
    """Bytes a process has made the kernel fetch from storage (``/proc/PID/io``).

    The page cache's hits are not in it: what it counts came from the disk.
    """
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return None


def check_disk(target: Path, shape: LlamaShape, dtype: torch.dtype) -> None:
    needed = shape.parameters * _itemsize(dtype) + _DISK_MARGIN_BYTES
    existing = target if target.exists() else target.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise NotEnoughDisk(
            f"the {shape.layers}-layer model needs {needed / 1e9:.1f} GB free "
            f"in {existing} (with margin), only {free / 1e9:.1f} GB are; "
            "use --big-layers to shorten it or --big-dir elsewhere"
        )


def default_budget(shape: LlamaShape, tokens: int) -> Budget:
    """Room for the resident parts, the KV cache and the layers in flight only.

    The engine keeps embeddings, norm and head, and reads ahead two layers
    while a third computes (its default prefetch depth): with this budget no
    decoder layer can stay resident, however many the model has.
    """
    outer = shape.outer_parameters * _COMPUTE_ITEMSIZE
    in_flight = _IN_FLIGHT_LAYERS * shape.layer_parameters * _COMPUTE_ITEMSIZE
    kv_width = shape.kv_heads * (shape.hidden // shape.heads)
    kv_per_token = 2 * shape.layers * kv_width * _COMPUTE_ITEMSIZE
    kv = (_PROMPT_ALLOWANCE + tokens) * kv_per_token
    return Budget(_megabytes(outer + in_flight + kv), _megabytes(kv))


@contextmanager
def _model_folder(options: BigOptions) -> Iterator[Path]:
    if options.folder is not None:
        yield options.folder
        return
    options.home.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-big-", dir=options.home))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ensure_model(folder: Path, options: BigOptions, report: BigReport) -> None:
    if _is_complete(folder, options.shape):
        report.notes.append("reused the model already written in the folder")
        return
    check_disk(folder, options.shape, options.dtype)
    logger.info("writing a %d-layer random Llama into %s", options.shape.layers, folder)
    started = time.perf_counter()
    write_random_llama(folder, options.shape, options.dtype, options.tokenizer_folder)
    report.write_s = time.perf_counter() - started


def _is_complete(folder: Path, shape: LlamaShape) -> bool:
    """A finished write of this shape (the index file is written last)."""
    if not (folder / INDEX_FILE).is_file():
        return False
    config = json.loads((folder / "config.json").read_text())
    return (
        config.get("num_hidden_layers") == shape.layers
        and config.get("hidden_size") == shape.hidden
        and config.get("intermediate_size") == shape.intermediate
    )


def _measure_reading(files: tuple[Path, ...], report: BigReport) -> None:
    layer_files = files[1:-1] or files
    logger.info("measuring the disk's read rate with the page cache emptied")
    # Every layer file, as a sweep reads them: a few gigabytes of a virtual
    # disk read at three times its sustained rate, or at a fifth of it.
    whole = sum(path.stat().st_size for path in layer_files)
    rate, method = cold_read_bandwidth(layer_files, whole)
    report.cold_read_bytes_per_s, report.cold_read_method = rate, method
    report.page_cache_read_bytes_per_s = page_cache_read_bandwidth(layer_files[:1])
    report.matmul_flops_per_s = matmul_rate()


def _serve(folder: Path, options: BigOptions, report: BigReport) -> None:
    spec = ServerSpec(folder, options.home, 1, options.budget)
    report.notes.append(f"page cache: {drop_file_cache(weight_files(folder))}")
    try:
        server = start_server(spec, options.timeout_s)
    except (ServerFailed, OSError) as error:
        report.error = f"server did not start: {error}"
        return
    report.max_memory = None if server.budget is None else server.budget.max_memory
    _note_residency(fetch_residency(server.base_url), options, report)
    try:
        with MemoryWatch(server.pid) as watch:
            before = storage_read_bytes(server.pid)
            _generate(server.base_url, options, report)
            after = storage_read_bytes(server.pid)
            peaks = watch.peaks()
        if before is not None and after is not None:
            report.disk_read_bytes = after - before
        report.peak_rss_bytes = peaks.rss_bytes
        report.peak_anon_bytes = peaks.anon_bytes
    finally:
        server.stop()


def _note_residency(
    residency: Residency | None, options: BigOptions, report: BigReport
) -> None:
    """Streamed bytes as stored, for the layers the server actually streams."""
    if residency is None:
        report.notes.append("the server did not report its plan: all layers counted")
        return
    report.notes.append(residency.describe())
    layer_bytes = options.shape.layer_parameters * _itemsize(options.dtype)
    report.streamed_bytes = residency.streamed_layers * layer_bytes


def _generate(base_url: str, options: BigOptions, report: BigReport) -> None:
    logger.info("generating %d tokens from the big model", options.tokens)
    try:
        load = run_load(base_url, 1, options.tokens, options.timeout_s)
    except LOAD_ERRORS as error:
        report.error = f"{type(error).__name__}: {error}"
        return
    report.completion_tokens = load.completion_tokens
    report.ttft_s = load.median_ttft_s
    report.wall_s = load.wall_s


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _megabytes(count: float) -> str:
    return f"{math.ceil(count / 1e6)}MB"
