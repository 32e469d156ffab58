"""Typed knobs of the engine, filled from the server's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class EngineOptions:
    device: torch.device
    dtype: torch.dtype
    max_batch: int = 8
    max_queue: int = 64
    prefetch_depth: int = 2
    max_sweep_tokens: int = 512  # packed tokens per sweep; prompts are chunked to fit
    # An idle engine that gets a request waits for others arriving at most this
    # many seconds apart, so that they share their first sweep (see Scheduler).
    batch_wait_s: float = 0.01
    max_memory: int | None = None  # bytes for weights and KV cache; None: no limit
    kv_memory: int | None = None  # bytes of KV cache; None: a quarter of max_memory
    home: Path = Path("~/.cache/layerstream").expanduser()
    request_timeout_s: float | None = None  # from submission; None: no deadline
