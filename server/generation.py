"""A submitted request as the event loop sees it: its engine events, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine import Engine
from engine.request import (
    ErrorEvent,
    Event,
    FinishEvent,
    GenerationRequest,
    RequestHandle,
)


class EventStream:
    """Events of one request, handed from the worker thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._handle: RequestHandle | None = None
        self.is_done = False

    @classmethod
    def submit(cls, engine: Engine, request: GenerationRequest) -> EventStream:
        """Queue the request in the engine; raises what ``engine.submit`` raises."""
        stream = cls(asyncio.get_running_loop())
        stream._handle = engine.submit(request, stream._deliver)
        return stream

    def _deliver(self, event: Event) -> None:
        # Runs on the engine's worker thread; an asyncio queue may only be
        # touched from its own loop.
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def events(self) -> AsyncIterator[Event]:
        """Yields events until, and including, the request's finish or error."""
        while not self.is_done:
            event = await self._queue.get()
            self.is_done = isinstance(event, (FinishEvent, ErrorEvent))
            yield event

    def cancel(self) -> None:
        """Drops the request in the engine, unless it already ended there."""
        if self._handle is not None and not self.is_done:
            self._handle.cancel()
