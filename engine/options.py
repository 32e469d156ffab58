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
    home: Path = Path("~/.cache/layerstream").expanduser()
