"""One request's life inside the worker: its cache, its tokens, its text."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from engine.constraint import TokenConstraint
from engine.detokenize import TextStream
from engine.kv_cache import BlockKey, SequenceCache
from engine.request import (
    EmbeddingRequest,
    EventSink,
    Request,
    RequestHandle,
    RequestState,
    TokenLogprob,
)


@dataclass
class Sequence:
    request: Request
    handle: RequestHandle
    sink: EventSink
    text: TextStream | None  # None for an embedding: it produces no text
    generator: torch.Generator | None
    state: RequestState = RequestState.WAITING
    cache: SequenceCache | None = None
    output_ids: list[int] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens already in the KV cache
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)
    constraint: TokenConstraint | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # first admission; a preemption keeps it
    # An embedding's final hidden rows summed over the chunks run so far: [hidden]
    pooled: torch.Tensor | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def is_embedding(self) -> bool:
        return isinstance(self.request, EmbeddingRequest)

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

    @property
    def queue_s(self) -> float:
        """Seconds spent waiting before the first admission (so far, if waiting)."""
        end = time.monotonic() if self.started_at is None else self.started_at
        return end - self.submitted_at

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def is_prefilling(self) -> bool:
        return len(self.pending_ids) > 1 or self.num_cached == 0

    def start(self, cache: SequenceCache) -> None:
        """Join the batch, computing only what no remembered block holds.

        After a preemption that is often nothing but the last partial block.
        An embedding computes every token: remembered blocks hold keys and
        values, not the hidden states it averages.
        """
        tokens = list(self.request.prompt_ids) + self.output_ids
        self.cache = cache
        if self.started_at is None:
            self.started_at = time.monotonic()
        self.num_cached = 0 if self.is_embedding else cache.reuse_prefix(tokens)
        self.pending_ids = tokens[self.num_cached :]
        self.pooled = None
        self.state = RequestState.RUNNING

    def share(self, filling: Mapping[BlockKey, int]) -> None:
        """Take the next blocks of the prompt that are remembered or filled now.

        ``filling``: blocks that earlier prompts of the coming sweep fill. An
        embedding takes none, as in ``start``.
        """
        if self.cache is not None and not self.is_embedding:
            self.consumed(self.cache.share(self.pending_ids, filling))

    def consumed(self, count: int) -> None:
        self.num_cached += count
        self.pending_ids = self.pending_ids[count:]

    def pool(self, hidden: torch.Tensor) -> None:
        """Adds a chunk's final hidden states ([tokens, hidden]) to the sum."""
        total = hidden.sum(dim=0)
        self.pooled = total if self.pooled is None else self.pooled + total

    def mean_hidden(self) -> tuple[float, ...]:
        """The embedding, once every prompt token has been pooled."""
        if self.pooled is None or self.pending_ids:
            raise RuntimeError(f"{self.request_id} has not run its whole prompt")
        return tuple((self.pooled / self.num_prompt_tokens).tolist())

    def release(self) -> None:
        """Free the KV cache as soon as the sequence leaves the batch."""
        if self.cache is not None:
            self.cache.free()
        self.cache = None
        self.num_cached = 0
        self.pending_ids = []
