"""One request's life inside the worker: its cache, its tokens, its text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from engine.detokenize import TextStream
from engine.request import (
    EventSink,
    FinishReason,
    GenerationRequest,
    RequestHandle,
    RequestState,
)


@dataclass
class Sequence:
    request: GenerationRequest
    handle: RequestHandle
    sink: EventSink
    text: TextStream
    generator: torch.Generator | None
    state: RequestState = RequestState.WAITING
    cache: DynamicCache | None = None
    output_ids: list[int] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def is_done(self) -> bool:
        return self.state in (
            RequestState.FINISHED,
            RequestState.CANCELLED,
            RequestState.FAILED,
        )

    def start(self, cache: DynamicCache) -> None:
        self.cache = cache
        self.pending_ids = list(self.request.prompt_ids)
        self.state = RequestState.RUNNING

    def release(self) -> None:
        """Free the KV cache as soon as the sequence leaves the batch."""
        self.cache = None
        self.pending_ids = []
