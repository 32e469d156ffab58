"""A safetensors file: its header, zero-copy views, and reads into buffers.

The file is memory-mapped. On the CPU, a streamed layer whose stored dtype is
the compute dtype is used in place: its pages are mapped ahead of the compute
and the page cache is the only copy. Otherwise a layer is copied out of the
mapping into a reused staging buffer (converted on the way, or then sent to
the GPU).
"""

from __future__ import annotations

import itertools
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
_HEADER_LIMIT = 100 << 20
# Linux's MADV_POPULATE_READ (5.14+): fill the page tables from the page cache.
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


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


class TensorFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            self.tensors, self.metadata = _read_header(handle, path)
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

    def span(self, keys: list[str]) -> torch.Tensor | None:
        """The bytes of ``keys`` as one flat tensor, if they lie end to end."""
        infos = [self.tensors[key] for key in keys]
        dtypes = {info.dtype for info in infos}
        touching = all(a.end == b.start for a, b in itertools.pairwise(infos))
        if len(dtypes) != 1 or not touching:
            return None
        count = sum(info.numel for info in infos)
        return torch.frombuffer(
            self._map, dtype=dtypes.pop(), count=count, offset=infos[0].start
        )

    def populate(self, key: str) -> None:
        """Map one tensor's pages now, reading them from disk if they are not cached.

        Run ahead of the compute, so that the compute finds the pages in place;
        cheap when they already are.
        """
        info = self.tensors[key]
        start = info.start - info.start % mmap.PAGESIZE
        if info.end <= start:
            return
        if self._can_populate:
            try:
                self._map.madvise(_POPULATE_READ, start, info.end - start)
                return
            except OSError:  # before Linux 5.14: ask for read-ahead instead
                self._can_populate = False
        self._map.madvise(mmap.MADV_WILLNEED, start, info.end - start)

    def close(self) -> None:
        self._map.close()


def _read_header(handle, path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    size = path.stat().st_size
    try:
        (length,) = struct.unpack("<Q", handle.read(8))
        if not 0 < length <= min(_HEADER_LIMIT, size - 8):
            raise ValueError(f"header length {length}")
        header = json.loads(handle.read(length))
    except (struct.error, ValueError, UnicodeDecodeError) as error:
        raise ModelFileError(str(path), f"not a safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise ModelFileError(str(path), "not a safetensors file (no header table)")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {k: _info(k, v, 8 + length, path) for k, v in header.items()}
    end = max((info.end for info in tensors.values()), default=8 + length)
    if end > size:
        raise ModelFileError(
            str(path), f"file is truncated: {size} bytes, the header needs {end}"
        )
    return tensors, metadata


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
