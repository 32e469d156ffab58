"""Refuses request bodies over ``max_body_size`` before anything parses them."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import send_failure
from server.exceptions import BodyTooLarge


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None:
            if length > self.max_bytes:
                await send_failure(BodyTooLarge(self.max_bytes), scope, send)
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read up to the limit here, then replay.
        body = await self._read_capped(receive)
        if body is None:
            await send_failure(BodyTooLarge(self.max_bytes), scope, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_capped(self, receive: Receive) -> bytes | None:
        parts: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app will see it on its own
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_bytes:
                return None
            more = message.get("more_body", False)
        return b"".join(parts)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # later messages: the disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
