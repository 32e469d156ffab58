"""The choices of one request: gathered whole, and counted for the access log."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.constraint import ConstraintFactory
from engine.errors import RequestTimeoutError
from engine.request import (
    EmbeddingEvent,
    ErrorEvent,
    Event,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from engine.sampling import choice_seed
from server.access_log import RequestRecord
from server.errors import failure_of
from server.exceptions import TooManySequences
from server.generation import ChoiceStreams
from server.schemas.chat_response import Usage


def refuse_over_queue(count: int, max_queue: int, param: str) -> None:
    """Refuses a request whose sequences could never all wait in the queue.

    Each choice (or input) is a sequence of its own; a request of more than
    the queue holds would meet a 503 on every retry.
    """
    if count > max_queue:
        raise TooManySequences(param, count, max_queue)


def choice_requests(
    request_id: str,
    prompts: list[tuple[list[int], SamplingParams]],
    n: int,
    constraint: ConstraintFactory | None = None,
) -> list[GenerationRequest]:
    """One engine request per choice; prompt p's choices are p*n ... p*n + n-1.

    Choice j of a prompt draws from a generator derived from the seed and j, so
    a seeded request gives the same choices every time. The choices of a prompt
    are separate sequences: the prompt is computed, and held in the KV cache,
    once per choice. Sharing it would need the scheduler to fork a sequence.
    The engine makes each choice its own ``constraint`` state from the factory.
    """
    requests = []
    for p, (prompt_ids, params) in enumerate(prompts):
        for j in range(n):
            index = p * n + j
            engine_id = request_id if index == 0 else f"{request_id}-{index}"
            choice = replace(params, seed=choice_seed(params.seed, j))
            request = GenerationRequest(engine_id, prompt_ids, choice, constraint)
            requests.append(request)
    return requests


@dataclass
class ChoiceOutput:
    """Everything one choice produced, once it has finished."""

    pieces: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason = "stop"

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Tally:
    """Keeps the request's record current as its choices' events pass by.

    The record's counts are the usage too: the prompt tokens (each prompt
    once, however many choices share it) and the tokens of every choice.
    """

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.has_failed = False
        self._reasons: list[str] = []

    def note(self, index: int, event: Event) -> None:
        match event:
            case TokenEvent(token_count=count) | FinishEvent(completion_tokens=count):
                self.record.note_tokens(count, index)
        match event:
            case FinishEvent(reason=reason, queue_s=queue_s):
                self._note_end(reason, queue_s)
            case EmbeddingEvent(queue_s=queue_s):
                self._note_end("embedded", queue_s)
            case ErrorEvent(error=error):
                self.has_failed = True
                is_timeout = isinstance(error, RequestTimeoutError)
                self.record.outcome = "timeout" if is_timeout else "error"
                self.record.error = failure_of(error).detail

    def _note_end(self, outcome: str, queue_s: float) -> None:
        if outcome not in self._reasons:
            self._reasons.append(outcome)
        self.record.outcome = ",".join(self._reasons)
        # The request waited until its last choice joined the batch.
        self.record.queue_s = max(queue_s, self.record.queue_s or 0.0)

    @property
    def usage(self) -> Usage:
        return Usage.of(self.record.prompt_tokens, self.record.completion_tokens)


async def collect(streams: ChoiceStreams, tally: Tally) -> list[ChoiceOutput]:
    """Every choice whole; the first engine error is raised."""
    outputs = [ChoiceOutput() for _ in range(streams.num_choices)]
    async for index, event in streams.events():
        tally.note(index, event)
        output = outputs[index]
        match event:
            case TokenEvent(text=text, logprobs=logprobs):
                output.pieces.append(text)
                output.logprobs.extend(logprobs)
            case FinishEvent(reason=reason):
                output.finish_reason = reason
            case ErrorEvent(error=error):
                raise error
    return outputs
