"""A whole (unstreamed) answer that is dropped if its client leaves first."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response

from server.choices import Tally
from server.generation import ChoiceStreams

# Not a standard status: it marks, in the access log, a client that left early.
CLIENT_CLOSED_REQUEST = 499

T = TypeVar("T")


async def unless_gone(
    request: Request,
    work: Coroutine[Any, Any, T],
    streams: ChoiceStreams,
    tally: Tally,
) -> T | Response:
    """The result of ``work``, or a 499 once the client has disconnected."""
    working = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({working, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        # The client left, or the server is stopping: free the engine's place.
        is_abandoned = not working.done()
        if is_abandoned:
            working.cancel()
        streams.cancel()
    if is_abandoned:
        tally.record.outcome = "cancelled"
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return working.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body is already read, so the next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
