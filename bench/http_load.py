"""Concurrent streamed chat completions against the server, timed per request.

Every request is sent at once; tokens/s in all is the completion tokens of all
requests over the wall time from the first send to the last finish. The time
to first token ends at the first chunk with text: the server sends an empty
role chunk at once, before any layer ran. The client is ``bench.sse_client``:
it shares the machine's cores with the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import h11

from bench.prompt import chat_messages
from bench.server_process import SERVED_NAME
from bench.sse_client import StreamFailed, post_events

# What a load can fail with; asyncio's timeout is a distinct class before 3.11.
LOAD_ERRORS = (
    StreamFailed,
    h11.ProtocolError,
    OSError,
    asyncio.TimeoutError,
    ValueError,
)


@dataclass(frozen=True)
class StreamResult:
    ttft_s: float | None
    finished_s: float  # since the load's start
    completion_tokens: int
    text: str


@dataclass(frozen=True)
class LoadResult:
    streams: list[StreamResult]
    wall_s: float

    @property
    def completion_tokens(self) -> int:
        return sum(stream.completion_tokens for stream in self.streams)

    @property
    def median_ttft_s(self) -> float | None:
        times = sorted(s.ttft_s for s in self.streams if s.ttft_s is not None)
        return times[len(times) // 2] if times else None


def run_load(
    base_url: str, count: int, max_tokens: int, timeout_s: float, first_prompt: int = 0
) -> LoadResult:
    """``count`` streams at once; stream i asks prompt ``first_prompt + i``."""
    load = _load(base_url, count, max_tokens, first_prompt)
    return asyncio.run(asyncio.wait_for(load, timeout_s))


async def _load(
    base_url: str, count: int, max_tokens: int, first_prompt: int
) -> LoadResult:
    started = time.perf_counter()
    calls = [
        _stream(base_url, started, max_tokens, chat_messages(first_prompt + i))
        for i in range(count)
    ]
    streams = await asyncio.gather(*calls)
    return LoadResult(streams, max(s.finished_s for s in streams))


async def _stream(
    base_url: str, started: float, max_tokens: int, messages: list[dict]
) -> StreamResult:
    body = {
        "model": SERVED_NAME,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ttft, parts, tokens = None, [], 0
    # No read timeout: with layers streamed, a token can take minutes.
    async for chunk in post_events(base_url, "/v1/chat/completions", body):
        text, usage = _content(chunk), chunk.get("usage")
        if text and ttft is None:
            ttft = time.perf_counter() - started
        parts.append(text)
        if usage:
            tokens = usage["completion_tokens"]
    finished = time.perf_counter() - started
    return StreamResult(ttft, finished, tokens, "".join(parts))


def _content(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return choices[0].get("delta", {}).get("content") or ""
