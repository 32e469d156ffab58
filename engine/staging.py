"""Reused buffers that streamed layers are read into, and their trip to a GPU.

A fixed pool of host buffers, each as large as the largest streamed layer, is
allocated once. The prefetch thread reads a layer into a free buffer; the
buffer comes back to the pool when the layer has been used. On CUDA the buffers
are pinned and the copy to the device runs on a stream of its own, ordered
against the compute by events, so it overlaps the previous layer's compute.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import torch


@dataclass
class Staged:
    buffer: torch.Tensor  # uint8 host buffer
    copied: torch.cuda.Event | None = None  # the device copy out of it is done


class StagingPool:
    def __init__(self, count: int, nbytes: int, device: torch.device) -> None:
        pin = device.type == "cuda"
        self.nbytes = nbytes
        self._free: queue.Queue[Staged] = queue.Queue()
        for _ in range(count):
            buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
            self._free.put(Staged(buffer))

    def take(self) -> torch.Tensor:
        staged = self._free.get()
        if staged.copied is not None:
            # The GPU may still be reading the buffer for its last layer.
            staged.copied.synchronize()
        return staged.buffer

    def give(self, buffer: torch.Tensor, copied: torch.cuda.Event | None) -> None:
        self._free.put(Staged(buffer, copied))


class DeviceCopier:
    """Moves a layer's tensors to the compute device off the compute stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def copy(
        self, tensors: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
        if self._stream is None:
            return tensors, None
        with torch.cuda.stream(self._stream):
            moved = {
                k: t.to(self.device, non_blocking=True) for k, t in tensors.items()
            }
            done = torch.cuda.Event()
            done.record(self._stream)
        return moved, done

    @staticmethod
    def wait(tensors: dict[str, torch.Tensor], done: torch.cuda.Event | None) -> None:
        """Order the compute stream after the copy, and tell the allocator so."""
        if done is None:
            return
        stream = torch.cuda.current_stream()
        stream.wait_event(done)
        for tensor in tensors.values():
            tensor.record_stream(stream)
