"""This machine's physical limits: memory copy, file reads, matrix products.

Each is the best of a few tries: the machines are shared, and the best try is
the one least disturbed by other work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.model_size import ModelSize
from bench.results import Limits

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024 * 1024
_COPY_BYTES = 256 * 1024 * 1024
_MATMUL_SIZE = 2048
_TRIES = 5


def best_time(action: Callable[[], object], tries: int = _TRIES) -> float:
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def memory_copy_bandwidth(size: int = _COPY_BYTES) -> float:
    """Bytes moved per second by a large copy, reads plus writes."""
    source = torch.ones(size // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)  # fault the pages in before timing
    return 2 * size / best_time(lambda: target.copy_(source))


def matmul_rate(size: int = _MATMUL_SIZE) -> float:
    """float32 FLOP/s of a square matrix product on torch's threads."""
    left = torch.randn(size, size)
    right = torch.randn(size, size)
    torch.mm(left, right)
    return 2 * size**3 / best_time(lambda: torch.mm(left, right))


def page_cache_read_bandwidth(paths: Sequence[Path], tries: int = 3) -> float:
    """Bytes/s reading files that the page cache already holds (one warm read)."""
    read_files(paths)
    total = sum(path.stat().st_size for path in paths)
    return total / best_time(lambda: read_files(paths), tries)


def cold_read_bandwidth(paths: Sequence[Path], limit_bytes: int) -> tuple[float, str]:
    """Bytes/s reading files from the disk, and how the page cache was emptied."""
    chosen = _first_bytes(paths, limit_bytes)
    method = drop_file_cache(chosen)
    started = time.perf_counter()
    total = read_files(chosen)
    return total / (time.perf_counter() - started), method


def read_files(paths: Sequence[Path]) -> int:
    # torch aligns its buffers to 64 bytes; the kernel's copy into a bytearray
    # (16-byte aligned) ran at a third of the rate on the development machine.
    view = memoryview(torch.empty(CHUNK_BYTES, dtype=torch.uint8).numpy())
    total = 0
    for path in paths:
        with path.open("rb", buffering=0) as file:
            while count := file.readinto(view):
                total += count
    return total


def drop_file_cache(paths: Sequence[Path]) -> str:
    """Evicts the files' pages from the page cache; says how, or that it could not."""
    if not hasattr(os, "posix_fadvise"):
        return _drop_all_caches()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            # Dirty pages cannot be evicted: write them back first.
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "posix_fadvise(DONTNEED) on the files"


def _drop_all_caches() -> str:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as error:
        return f"page cache not dropped ({error.strerror}): figure may be warm"
    return "/proc/sys/vm/drop_caches"


def _first_bytes(paths: Sequence[Path], limit_bytes: int) -> list[Path]:
    """The leading files whose sizes add up to about limit_bytes (at least one)."""
    chosen, total = [], 0
    for path in paths:
        if chosen and total + path.stat().st_size > limit_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size
    return chosen


def measure_limits(size: ModelSize, itemsize: int) -> Limits:
    logger.info("measuring memory copy, file read and matmul rates")
    return Limits(
        weight_bytes=size.bytes_as(itemsize),
        parameters=size.parameters,
        memory_copy_bytes_per_s=memory_copy_bandwidth(),
        page_cache_read_bytes_per_s=page_cache_read_bandwidth(size.files),
        matmul_flops_per_s=matmul_rate(),
    )
