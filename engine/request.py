"""What a caller hands the engine, and what the engine hands back.

These types are the whole contract between the HTTP side and the worker: the
server builds a ``GenerationRequest`` (or an ``EmbeddingRequest``) from token ids
it prepared, and reads ``TokenEvent`` / ``FinishEvent`` (or ``EmbeddingEvent``)
/ ``ErrorEvent`` values from its callback.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from engine.constraint import ConstraintFactory

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; validated by the server already."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or less): no cut
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # alternatives listed per token; None: no logprobs

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    # Restricts what may be generated (a JSON schema, a tool call); None: free text.
    constraint: ConstraintFactory | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    """A prompt run for its hidden states only: nothing is generated after it."""

    request_id: str
    prompt_ids: list[int]


Request = GenerationRequest | EmbeddingRequest


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, and the likeliest alternatives'."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), likeliest first


@dataclass(frozen=True)
class TokenEvent:
    """New text for the client; never part of a stop string or of a UTF-8 char."""

    text: str
    token_count: int  # tokens generated so far by the request, this one included
    # Asked-for logprobs of the tokens generated since the previous event: text
    # held back delays them too, so they travel with the text they produced.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Seconds between submission and joining the batch; a measurement, so it
    # takes no part in comparing two outcomes.
    queue_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class EmbeddingEvent:
    """An embedding request's only answer: the mean of its final hidden states."""

    vector: tuple[float, ...]  # [hidden], after the final norm; not L2-normalized
    prompt_tokens: int
    queue_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class ErrorEvent:
    """A failure inside the worker, carried as a value to the reading side."""

    error: Exception


Event = TokenEvent | FinishEvent | EmbeddingEvent | ErrorEvent
EventSink = Callable[[Event], None]


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class RequestHandle:
    """The caller's grip on a submitted request: it can only cancel it."""

    request_id: str
    cancelled: bool = field(default=False)

    def cancel(self) -> None:
        # Read by the worker between sweeps; a plain flag is enough because only
        # the worker acts on it.
        self.cancelled = True
