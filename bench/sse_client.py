"""A lean client for one streamed POST: h11 over an asyncio connection.

The load client shares the machine with the server it measures. On two cores
httpx spent about 0.2 s of CPU on sixteen streams of 32 tokens, a few percent
of the run taken from the server's threads; h11 alone (the HTTP state machine
uvicorn and httpx are built on) spends about a quarter of that.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11

_READ_BYTES = 65536
_DATA = b"data: "
_DONE = b"[DONE]"


class StreamFailed(Exception):
    pass


async def post_events(
    base_url: str, path: str, body: dict, connect_timeout_s: float = 10.0
) -> AsyncIterator[dict]:
    """The JSON ``data:`` events of a streamed POST, up to ``[DONE]``.

    A status other than 200, an error event or a stream cut short raises
    ``StreamFailed``.
    """
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port), connect_timeout_s
    )
    try:
        connection = h11.Connection(h11.CLIENT)
        writer.write(_request_bytes(connection, f"{host}:{port}", path, body))
        async for data in _body(connection, reader):
            if data == _DONE:
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise StreamFailed(chunk["error"].get("message", "error in stream"))
            yield chunk
        raise StreamFailed("the stream ended without [DONE]")
    finally:
        writer.close()


def _request_bytes(
    connection: h11.Connection, host: str, path: str, body: dict
) -> bytes:
    payload = json.dumps(body).encode()
    headers = [
        ("Host", host),
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream"),
        ("Content-Length", str(len(payload))),
    ]
    request = h11.Request(method="POST", target=path, headers=headers)
    return b"".join(
        connection.send(event)
        for event in (request, h11.Data(data=payload), h11.EndOfMessage())
    )


async def _body(
    connection: h11.Connection, reader: asyncio.StreamReader
) -> AsyncIterator[bytes]:
    """The payload of each ``data:`` line of the response body."""
    pending = b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(_READ_BYTES))
        elif isinstance(event, h11.Response) and event.status_code != 200:
            text = await _rest(connection, reader)
            raise StreamFailed(f"HTTP {event.status_code}: {text[:200]}")
        elif isinstance(event, h11.Data):
            lines = (pending + bytes(event.data)).split(b"\n")
            pending = lines.pop()  # an unfinished line waits for the next read
            for line in lines:
                if line.startswith(_DATA):
                    yield line[len(_DATA) :].rstrip(b"\r")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


async def _rest(connection: h11.Connection, reader: asyncio.StreamReader) -> str:
    parts = []
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(_READ_BYTES))
        elif isinstance(event, h11.Data):
            parts.append(bytes(event.data))
        else:
            return b"".join(parts).decode(errors="replace")
