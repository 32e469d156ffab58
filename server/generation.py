"""A submitted request as the event loop sees it: its choices' engine events.

A request with several choices (``n`` > 1, or several prompts; several inputs
to embed) is several engine requests; their events arrive here merged, each
tagged with its choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from functools import partial

from engine import Engine
from engine.request import (
    EmbeddingEvent,
    ErrorEvent,
    Event,
    FinishEvent,
    Request,
    RequestHandle,
)

# The last event of an engine request.
_ENDS = (FinishEvent, EmbeddingEvent, ErrorEvent)


class ChoiceStreams:
    """Events of one request's choices, handed from the worker to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self._handles: list[RequestHandle] = []
        self._open: set[int] = set()

    @classmethod
    def submit(cls, engine: Engine, requests: Sequence[Request]) -> ChoiceStreams:
        """Queue one engine request per choice; raises what ``engine.submit`` does.

        If a later choice is refused (a full queue), the earlier ones are
        cancelled: nobody would read them.
        """
        streams = cls(asyncio.get_running_loop())
        try:
            for index, request in enumerate(requests):
                sink = partial(streams._deliver, index)
                streams._handles.append(engine.submit(request, sink))
                streams._open.add(index)
        except Exception:
            streams.cancel()
            raise
        return streams

    @property
    def num_choices(self) -> int:
        return len(self._handles)

    @property
    def is_done(self) -> bool:
        """Every choice has finished or failed in the engine."""
        return not self._open

    def _deliver(self, index: int, event: Event) -> None:
        # Runs on the engine's worker thread; an asyncio queue may only be
        # touched from its own loop.
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, event))

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(choice, event) pairs until every choice has finished or failed."""
        while self._open:
            index, event = await self._queue.get()
            if isinstance(event, _ENDS):
                self._open.discard(index)
            yield index, event

    def cancel(self) -> None:
        """Drops the choices still running in the engine."""
        for index in self._open:
            self._handles[index].cancel()
