"""Engine events turned into a chat completion, whole or as a chunk stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from engine.request import Event, FinishEvent, TokenEvent, TokenLogprob
from server.choices import ChoiceOutput, Tally
from server.generation import ChoiceStreams
from server.logprobs import TokenPieces, chat_logprobs
from server.schemas.chat_response import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    Usage,
)
from server.schemas.logprobs import ChoiceLogprobs
from server.sse import SseEvent, relay


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ChunkWriter:
    """Stamps every piece of one completion with the same id, time and model."""

    completion_id: str
    model: str
    pieces: TokenPieces
    include_usage: bool = False
    wants_logprobs: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def choice(
        self,
        index: int,
        delta: Delta,
        finish_reason: FinishReason | None = None,
        logprobs: Sequence[TokenLogprob] = (),
    ) -> SseEvent:
        choice = ChunkChoice(
            index=index,
            delta=delta,
            logprobs=chat_logprobs(logprobs, self.pieces) if logprobs else None,
            finish_reason=finish_reason,
        )
        return self._event(self._chunk([choice]))

    def chunk_for(self, index: int, event: Event) -> SseEvent | None:
        match event:
            case TokenEvent(text=text, logprobs=logprobs) if text or logprobs:
                return self.choice(index, Delta(content=text), logprobs=logprobs)
            case FinishEvent(reason=reason):
                return self.choice(index, Delta(), reason)
        return None

    def usage(self, usage: Usage) -> SseEvent:
        return self._event(self._chunk([], usage))

    def completion(self, outputs: list[ChoiceOutput], usage: Usage) -> ChatCompletion:
        return ChatCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=[self._whole(i, output) for i, output in enumerate(outputs)],
            usage=usage,
        )

    def _whole(self, index: int, output: ChoiceOutput) -> Choice:
        return Choice(
            index=index,
            message=AssistantMessage(content=output.text),
            logprobs=self._logprobs(output.logprobs),
            finish_reason=output.finish_reason,
        )

    def _logprobs(self, entries: list[TokenLogprob]) -> ChoiceLogprobs | None:
        return chat_logprobs(entries, self.pieces) if self.wants_logprobs else None

    def _chunk(
        self, choices: list[ChunkChoice], usage: Usage | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )

    def _event(self, chunk: ChatCompletionChunk) -> SseEvent:
        # With include_usage every chunk carries "usage" (null until the last);
        # without it, the key is absent.
        exclude = None if self.include_usage else {"usage"}
        return {"data": chunk.model_dump_json(exclude=exclude)}


def stream_events(
    streams: ChoiceStreams, writer: ChunkWriter, tally: Tally
) -> AsyncIterator[SseEvent]:
    """SSE events of a streamed chat completion.

    Each choice opens with its role chunk and closes with its finish chunk;
    the usage of all choices, if asked for, comes after the last of them.
    """
    roles = [
        writer.choice(index, Delta(role="assistant", content=""))
        for index in range(streams.num_choices)
    ]
    usage_for = writer.usage if writer.include_usage else None
    return relay(streams, tally, roles, writer.chunk_for, usage_for)
