"""What one sweep cost: bytes streamed, time waiting for weights, time computing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SweepStats:
    sequences: int = 0
    tokens: int = 0  # packed tokens: one per decoding sequence, a chunk per prompt
    layers_streamed: int = 0
    bytes_streamed: int = 0
    wait_s: float = 0.0  # blocked on the prefetcher
    compute_s: float = 0.0  # the rest of the sweep: layers, embedding, head

    @property
    def total_s(self) -> float:
        return self.wait_s + self.compute_s


@dataclass
class EngineTotals:
    """Running sums over all sweeps since start."""

    sweeps: int = 0
    tokens: int = 0
    bytes_streamed: int = 0
    wait_s: float = 0.0
    compute_s: float = 0.0  # the rest of the sweep: layers, embedding, head

    def add(self, sweep: SweepStats) -> None:
        self.sweeps += 1
        self.tokens += sweep.tokens
        self.bytes_streamed += sweep.bytes_streamed
        self.wait_s += sweep.wait_s
        self.compute_s += sweep.compute_s
