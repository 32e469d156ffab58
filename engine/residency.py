"""Which layers stay in memory and which are streamed, from a memory budget.

The budget covers what the engine holds for the model: resident weights, the
streamed layers in flight, and the KV cache. Embeddings, final norm and head
are always resident (every sweep needs them, at both ends); then the KV
reserve and the in-flight streaming buffers are set aside, and layers are kept
resident, in order, while they fit. A model that fits entirely streams nothing.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch

from engine.errors import LayerstreamError

logger = logging.getLogger(__name__)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


class BudgetTooSmallError(LayerstreamError):
    """The budget cannot hold even the parts that must stay resident."""


def parse_bytes(text: str) -> int:
    """``"2GB"``, ``"512MiB"``, ``"1e9"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match[2].upper()
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 512MB or 2GB)")
    return int(float(match[1]) * _UNITS[unit])


def default_budget(device: torch.device) -> int:
    """Half the free RAM on the CPU; 90% of the free memory of a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    return _available_ram() // 2


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass(frozen=True)
class ResidencyPlan:
    budget: int | None
    fixed_bytes: int  # embeddings, final norm, head
    layer_bytes: list[int]
    resident_layers: frozenset[int]
    kv_bytes: int
    in_flight_layers: int

    @property
    def streamed_layers(self) -> list[int]:
        indexes = range(len(self.layer_bytes))
        return [i for i in indexes if i not in self.resident_layers]

    @property
    def resident_bytes(self) -> int:
        kept = sum(self.layer_bytes[i] for i in self.resident_layers)
        return self.fixed_bytes + kept

    @property
    def streamed_bytes_per_sweep(self) -> int:
        return sum(self.layer_bytes[i] for i in self.streamed_layers)

    @property
    def streaming_buffer_bytes(self) -> int:
        if not self.streamed_layers:
            return 0
        largest = max(self.layer_bytes[i] for i in self.streamed_layers)
        return largest * self.in_flight_layers

    def describe(self) -> dict[str, object]:
        return {
            "budget_bytes": self.budget,
            "resident_bytes": self.resident_bytes,
            "resident_layers": sorted(self.resident_layers),
            "streamed_layers": self.streamed_layers,
            "streamed_bytes_per_sweep": self.streamed_bytes_per_sweep,
            "streaming_buffer_bytes": self.streaming_buffer_bytes,
            "kv_cache_bytes": self.kv_bytes,
        }


def plan_residency(
    budget: int | None,
    fixed_bytes: int,
    layer_bytes: list[int],
    kv_bytes: int,
    in_flight_layers: int,
) -> ResidencyPlan:
    """Keep as many leading layers as fit; ``budget=None`` streams every layer."""
    resident: set[int] = set()
    if budget is not None:
        room = budget - fixed_bytes - kv_bytes
        if room < 0:
            raise BudgetTooSmallError(
                f"a budget of {_mb(budget)} cannot hold the embeddings, norm and "
                f"head ({_mb(fixed_bytes)}) plus the KV cache ({_mb(kv_bytes)})"
            )
        resident = _fit(room, layer_bytes, in_flight_layers)
    return ResidencyPlan(
        budget,
        fixed_bytes,
        layer_bytes,
        frozenset(resident),
        kv_bytes,
        in_flight_layers,
    )


def _fit(room: int, layer_bytes: list[int], in_flight: int) -> set[int]:
    if sum(layer_bytes) <= room:
        return set(range(len(layer_bytes)))
    # Streaming needs its own buffers for the layers in flight.
    room -= max(layer_bytes, default=0) * in_flight
    resident: set[int] = set()
    for index, size in enumerate(layer_bytes):
        if size > room:
            break
        resident.add(index)
        room -= size
    return resident


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
