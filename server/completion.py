"""Engine events turned into a chat completion, whole or as a chunk stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engine.errors import EngineStoppedError, RequestTimeoutError
from engine.request import ErrorEvent, FinishEvent, TokenEvent
from server.access_log import RequestRecord
from server.errors import stream_error_data
from server.generation import EventStream
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

SseEvent = dict[str, str]
DONE: SseEvent = {"data": "[DONE]"}


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ChunkWriter:
    """Stamps every piece of one completion with the same id, time and model."""

    completion_id: str
    model: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def choice(
        self, delta: Delta, finish_reason: FinishReason | None = None
    ) -> SseEvent:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
        return self._event(self._chunk([choice]))

    def usage(self, usage: Usage) -> SseEvent:
        return self._event(self._chunk([], usage))

    def completion(self, text: str, finish: FinishEvent) -> ChatCompletion:
        choice = Choice(
            message=AssistantMessage(content=text), finish_reason=finish.reason
        )
        return ChatCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=usage_of(finish),
        )

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


def usage_of(finish: FinishEvent) -> Usage:
    return Usage.of(finish.prompt_tokens, finish.completion_tokens)


def note_finish(record: RequestRecord, finish: FinishEvent) -> None:
    record.outcome = finish.reason
    record.prompt_tokens = finish.prompt_tokens
    record.completion_tokens = finish.completion_tokens
    record.queue_s = finish.queue_s


def note_error(record: RequestRecord, error: Exception) -> None:
    is_timeout = isinstance(error, RequestTimeoutError)
    record.outcome = "timeout" if is_timeout else "error"


async def collect(
    stream: EventStream, record: RequestRecord
) -> tuple[str, FinishEvent]:
    """The whole text and the finish of a request; an engine error is raised."""
    parts: list[str] = []
    async for event in stream.events():
        match event:
            case TokenEvent(text=text, token_count=count):
                parts.append(text)
                record.note_tokens(count)
            case FinishEvent():
                note_finish(record, event)
                return "".join(parts), event
            case ErrorEvent(error=error):
                note_error(record, error)
                raise error
    raise EngineStoppedError("the engine ended the request without finishing it")


async def stream_events(
    stream: EventStream, writer: ChunkWriter, record: RequestRecord
) -> AsyncIterator[SseEvent]:
    """SSE events of a streamed completion; the request is dropped if abandoned."""
    try:
        yield writer.choice(Delta(role="assistant", content=""))
        async for event in stream.events():
            for sse_event in _events_for(event, writer, record):
                yield sse_event
    finally:
        # Runs when the client goes away too: sse-starlette cancels the generator.
        if not stream.is_done:
            record.outcome = "cancelled"
        stream.cancel()


def _events_for(
    event: TokenEvent | FinishEvent | ErrorEvent,
    writer: ChunkWriter,
    record: RequestRecord,
) -> list[SseEvent]:
    match event:
        case TokenEvent(text=text, token_count=count):
            record.note_tokens(count)  # kept current for a cancelled log
            return [writer.choice(Delta(content=text))] if text else []
        case FinishEvent():
            note_finish(record, event)
            finish = [writer.choice(Delta(), event.reason)]
            usage = [writer.usage(usage_of(event))] if writer.include_usage else []
            return [*finish, *usage, DONE]
        case ErrorEvent(error=error):
            # The status line is already sent; the error travels in the stream,
            # which then ends without [DONE].
            note_error(record, error)
            return [{"data": stream_error_data(error)}]
