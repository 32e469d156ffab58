"""A safetensors file mapped into memory, read as zero-copy tensors.

Streaming a layer means: map its bytes into the process before it runs (on the
prefetch thread, so the compute never waits for a page fault) and drop them
from the process right after, so the process holds only the layers in flight.
The file's pages stay in the kernel's page cache, which is what makes a warm
sweep as fast as memory allows; nothing is copied.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ModelFileError

logger = logging.getLogger(__name__)

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
    "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
# Linux 5.14+: fills the page tables from the page cache without touching data.
_POPULATE = getattr(mmap, "MADV_POPULATE_READ", 22)
_HEADER_LIMIT = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


class MappedSafetensors:
    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            self.tensors = _read_header(handle, path)
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        self._can_populate = True

    def tensor(self, key: str) -> torch.Tensor:
        info = self.tensors[key]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        flat = torch.frombuffer(
            self._map, dtype=info.dtype, count=info.numel, offset=info.start
        )
        return flat.view(info.shape)

    def populate(self, keys: list[str]) -> None:
        """Map these tensors' pages in now, reading them from disk if needed."""
        for start, length in self._ranges(keys):
            if self._can_populate:
                try:
                    self._map.madvise(_POPULATE, start, length)
                    continue
                except OSError:  # older kernels: ask for read-ahead instead
                    self._can_populate = False
            self._map.madvise(mmap.MADV_WILLNEED, start, length)

    def release(self, keys: list[str]) -> None:
        """Drop these tensors' pages from the process; the page cache keeps them."""
        for start, length in self._ranges(keys):
            self._map.madvise(mmap.MADV_DONTNEED, start, length)

    def _ranges(self, keys: list[str]) -> list[tuple[int, int]]:
        ranges = []
        for key in keys:
            info = self.tensors[key]
            start = info.start - info.start % mmap.PAGESIZE
            if info.end > start:
                ranges.append((start, info.end - start))
        return ranges


def _read_header(handle, path: Path) -> dict[str, TensorInfo]:
    size = path.stat().st_size
    try:
        (length,) = struct.unpack("<Q", handle.read(8))
        if not 0 < length <= min(_HEADER_LIMIT, size - 8):
            raise ValueError(f"header length {length}")
        header = json.loads(handle.read(length))
    except (struct.error, ValueError, UnicodeDecodeError) as error:
        raise ModelFileError(str(path), f"not a safetensors file ({error})") from None
    tensors = {k: _info(k, v, 8 + length, path) for k, v in header.items()
               if k != "__metadata__"}  # fmt: skip
    end = max((info.end for info in tensors.values()), default=8 + length)
    if end > size:
        raise ModelFileError(
            str(path), f"file is truncated: {size} bytes, the header needs {end}"
        )
    return tensors


def _info(key: str, entry: dict, base: int, path: Path) -> TensorInfo:
    try:
        dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        info = TensorInfo(dtype, tuple(entry["shape"]), base + begin, base + end)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(str(path), f"bad entry for {key} ({error!r})") from None
    if info.end - info.start != info.numel * dtype.itemsize:
        raise ModelFileError(str(path), f"size of {key} does not match its shape")
    return info
