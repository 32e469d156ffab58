"""Engine events turned into a chat completion, whole or as a chunk stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from engine.request import ErrorEvent, Event, FinishEvent, TokenEvent, TokenLogprob
from server.choices import ChoiceOutput, Tally
from server.errors import stream_error_data
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

SseEvent = dict[str, str]
DONE: SseEvent = {"data": "[DONE]"}


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


async def stream_events(
    streams: ChoiceStreams, writer: ChunkWriter, tally: Tally
) -> AsyncIterator[SseEvent]:
    """SSE events of a streamed completion; the request is dropped if abandoned.

    Each choice opens with its role chunk and closes with its finish chunk;
    the usage of all choices, if asked for, comes after the last of them.
    """
    try:
        for index in range(streams.num_choices):
            yield writer.choice(index, Delta(role="assistant", content=""))
        async for index, event in streams.events():
            tally.note(index, event)
            if isinstance(event, ErrorEvent):
                # The status line is already sent; the error travels in the
                # stream, which then ends without [DONE].
                yield {"data": stream_error_data(event.error)}
                return
            if (chunk := _chunk_for(index, event, writer)) is not None:
                yield chunk
        if writer.include_usage:
            yield writer.usage(tally.usage)
        yield DONE
    finally:
        # Runs when the client goes away too: sse-starlette cancels the generator.
        if not streams.is_done and not tally.has_failed:
            tally.record.outcome = "cancelled"
        streams.cancel()


def _chunk_for(index: int, event: Event, writer: ChunkWriter) -> SseEvent | None:
    match event:
        case TokenEvent(text=text, logprobs=logprobs) if text or logprobs:
            return writer.choice(index, Delta(content=text), logprobs=logprobs)
        case FinishEvent(reason=reason):
            return writer.choice(index, Delta(), reason)
    return None
