"""What a caller hands the engine, and what the engine hands back.

These types are the whole contract between the HTTP side and the worker: the
server builds a ``GenerationRequest`` from token ids it prepared, and reads
``TokenEvent`` / ``FinishEvent`` / ``ErrorEvent`` values from its callback.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; validated by the server already."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class TokenEvent:
    """New text for the client; never part of a stop string or of a UTF-8 char."""

    text: str
    token_count: int  # tokens generated so far by the request, this one included


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Seconds between submission and joining the batch; a measurement, so it
    # takes no part in comparing two outcomes.
    queue_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class ErrorEvent:
    """A failure inside the worker, carried as a value to the reading side."""

    error: Exception


Event = TokenEvent | FinishEvent | ErrorEvent
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
