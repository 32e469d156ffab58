"""One streamed chat completion, timed and classified for the load test.

A request is *served* when its stream ends with ``[DONE]``, *rejected* when the
server answers 503 (a full queue: deliberate back-pressure, not a fault), and an
*error* otherwise: another status, a transport failure, an error chunk in the
stream, or a stream cut before ``[DONE]``.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

_DATA = "data:"
_DEFAULT_RETRY_AFTER_S = 1.0


class Outcome(enum.Enum):
    SERVED = "served"
    REJECTED = "rejected"
    ERROR = "error"


@dataclass(frozen=True)
class RequestResult:
    outcome: Outcome
    started_s: float  # since the load's start
    total_s: float
    ttft_s: float | None = None  # to the first chunk with text
    completion_tokens: int = 0
    retry_after_s: float = 0.0  # what a 503 asked for
    detail: str = ""  # why an error is one


class StreamBroken(Exception):
    pass


async def stream_chat(
    client: httpx.AsyncClient, body: dict[str, Any], load_start: float
) -> RequestResult:
    """Sends ``body`` (a streamed chat request) and reads the answer to its end."""
    started = time.perf_counter()
    at = started - load_start
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                return await _refused(reply, at, started)
            ttft, tokens = await _read_stream(reply, started)
    except (httpx.HTTPError, StreamBroken, ValueError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return RequestResult(Outcome.ERROR, at, _since(started), detail=detail)
    return RequestResult(Outcome.SERVED, at, _since(started), ttft, tokens)


async def _refused(reply: httpx.Response, at: float, started: float) -> RequestResult:
    text = (await reply.aread()).decode(errors="replace")
    if reply.status_code == 503:
        wait = _retry_after(reply.headers.get("retry-after"))
        return RequestResult(Outcome.REJECTED, at, _since(started), retry_after_s=wait)
    detail = f"HTTP {reply.status_code}: {text[:200]}"
    return RequestResult(Outcome.ERROR, at, _since(started), detail=detail)


async def _read_stream(
    reply: httpx.Response, started: float
) -> tuple[float | None, int]:
    ttft, pieces, counted = None, 0, None
    async for chunk in _chunks(reply.aiter_lines()):
        if _has_text(chunk):
            ttft = _since(started) if ttft is None else ttft
            pieces += 1
        if chunk.get("usage"):
            counted = chunk["usage"]["completion_tokens"]
    # The usage chunk counts tokens exactly; a text chunk may hold several.
    return ttft, pieces if counted is None else counted


async def _chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of an SSE stream; raises if it ends without ``[DONE]``."""
    async for line in lines:
        if not line.startswith(_DATA):
            continue
        data = line.removeprefix(_DATA).strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise StreamBroken(chunk["error"].get("message", "error in the stream"))
        yield chunk
    raise StreamBroken("the stream ended before [DONE]")


def _has_text(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def _retry_after(header: str | None) -> float:
    try:
        return max(0.0, float(header)) if header else _DEFAULT_RETRY_AFTER_S
    except ValueError:  # an HTTP date; the load does not need that precision
        return _DEFAULT_RETRY_AFTER_S


def _since(started: float) -> float:
    return time.perf_counter() - started
