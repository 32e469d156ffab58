"""Background reading of streamed layers, in the order a sweep needs them.

A sweep visits the streamed layers in a fixed cycle, so the reader simply walks
that cycle ahead of the compute, at most ``depth`` layers ahead. Reading and
computing therefore overlap, and the memory held by streamed weights is bounded
by ``depth + 2`` layers (queued, being read, being computed).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerRead:
    """A streamed layer ready for the compute; ``release`` returns its buffer."""

    tensors: dict[str, torch.Tensor]
    nbytes: int
    copied: torch.cuda.Event | None
    release: Callable[[], None]


@dataclass(frozen=True)
class _Fetched:
    index: int
    layer: LayerRead | None
    error: Exception | None = None


class Prefetcher:
    def __init__(
        self, read: Callable[[int], LayerRead], order: list[int], depth: int
    ) -> None:
        self._read = read
        self._order = order
        self._ready: queue.Queue[_Fetched] = queue.Queue(maxsize=max(depth, 1))
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="layerstream-prefetch", daemon=True
        )
        if order:
            self._thread.start()

    @property
    def num_ready(self) -> int:
        """Layers read and waiting for the compute."""
        return self._ready.qsize()

    def next(self, index: int) -> LayerRead:
        """Layer ``index``, once read; blocks until then."""
        while True:
            fetched = self._ready.get()
            # After a failed sweep the reader may be ahead of the compute: layers
            # of the abandoned sweep are skipped until the cycle comes round.
            if fetched.index == index:
                break
            if fetched.layer is not None:
                fetched.layer.release()
        if fetched.error is not None:
            raise fetched.error
        return fetched.layer

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed.is_set():
            for index in self._order:
                if not self._put(self._fetch(index)):
                    return

    def _fetch(self, index: int) -> _Fetched:
        try:
            return _Fetched(index, self._read(index))
        except Exception as error:  # handed to the compute side as a value
            logger.exception("reading layer %d failed", index)
            return _Fetched(index, None, error)

    def _put(self, fetched: _Fetched) -> bool:
        while not self._closed.is_set():
            try:
                self._ready.put(fetched, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
