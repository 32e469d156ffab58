"""A request's choices relayed as server-sent events, whatever the object format."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

from engine.request import ErrorEvent, Event
from server.choices import Tally
from server.errors import stream_error_data
from server.generation import ChoiceStreams
from server.schemas.chat_response import Usage

SseEvent = dict[str, str]
DONE: SseEvent = {"data": "[DONE]"}

# The chunks an engine event becomes for the client, maybe none: (choice, event).
ChunkFor = Callable[[int, Event], Iterable[SseEvent]]


async def relay(
    streams: ChoiceStreams,
    tally: Tally,
    opening: Iterable[SseEvent],
    chunk_for: ChunkFor,
    usage_for: Callable[[Usage], SseEvent] | None,
) -> AsyncIterator[SseEvent]:
    """``opening``, a chunk per engine event, the usage if asked, then [DONE].

    An engine error ends the stream with an error event and no [DONE]; a client
    that leaves (sse-starlette then cancels this generator) drops every choice.
    """
    try:
        for event in opening:
            yield event
        async for index, event in streams.events():
            tally.note(index, event)
            if isinstance(event, ErrorEvent):
                # The status line is already sent: the error travels in the stream.
                yield {"data": stream_error_data(event.error)}
                return
            for chunk in chunk_for(index, event):
                yield chunk
        if usage_for is not None:
            yield usage_for(tally.usage)
        yield DONE
    finally:
        if not streams.is_done and not tally.has_failed:
            tally.record.outcome = "cancelled"
        streams.cancel()
