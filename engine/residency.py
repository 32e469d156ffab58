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


# One layer being read while another computes: streaming holds no fewer.
MIN_IN_FLIGHT = 2


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
    """Keep as many leading layers as fit; ``budget=None`` streams every layer.

    ``in_flight_layers`` is how many streamed layers the runner would like to
    hold at once (0 where streamed layers are used in place and cost no memory
    of the process). A budget with less room than that holds fewer, down to
    two: one being read while one computes.
    """
    resident: set[int] = set()
    if budget is not None:
        room = budget - fixed_bytes - kv_bytes
        if room < 0:
            raise BudgetTooSmallError(
                f"a budget of {_mb(budget)} cannot hold the embeddings, norm and "
                f"head ({_mb(fixed_bytes)}) plus the KV cache ({_mb(kv_bytes)})"
            )
        if sum(layer_bytes) <= room:
            resident = set(range(len(layer_bytes)))
        else:
            in_flight_layers = _in_flight(room, layer_bytes, in_flight_layers, budget)
            largest = max(layer_bytes, default=0)
            resident = _fit(room - largest * in_flight_layers, layer_bytes)
    return ResidencyPlan(
        budget,
        fixed_bytes,
        layer_bytes,
        frozenset(resident),
        kv_bytes,
        in_flight_layers,
    )


def _in_flight(room: int, layer_bytes: list[int], wanted: int, budget: int) -> int:
    largest = max(layer_bytes, default=0)
    if wanted == 0 or largest == 0:
        return wanted
    fits = min(wanted, room // largest)
    if fits < MIN_IN_FLIGHT:
        raise BudgetTooSmallError(
            f"a budget of {_mb(budget)} leaves {_mb(room)} after the embeddings, "
            f"norm, head and KV cache: too little to stream layers of up to "
            f"{_mb(largest)}, {MIN_IN_FLIGHT} at a time"
        )
    if fits < wanted:
        logger.warning(
            "the budget holds %d streamed layers in flight, not %d: reading ahead less",
            fits,
            wanted,
        )
    return fits


def _fit(room: int, layer_bytes: list[int]) -> set[int]:
    resident: set[int] = set()
    for index, size in enumerate(layer_bytes):
        if size > room:
            break
        resident.add(index)
        room -= size
    return resident


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
