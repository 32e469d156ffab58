"""Concurrent streamed chat completions against the server, timed per request.

Every request is sent at once; tokens/s in all is the completion tokens of all
requests over the wall time from the first send to the last finish. The time
to first token ends at the first chunk with text: the server sends an empty
role chunk at once, before any layer ran.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from bench.prompt import chat_messages
from bench.server_process import SERVED_NAME

_DATA = "data: "


class StreamFailed(Exception):
    pass


# What a load can fail with; asyncio's timeout is a distinct class before 3.11.
LOAD_ERRORS = (StreamFailed, httpx.HTTPError, asyncio.TimeoutError, ValueError)


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
    limits = httpx.Limits(max_connections=count)
    # No read timeout: with layers streamed, a token can take minutes.
    timeout = httpx.Timeout(10.0, read=None)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=timeout
    ) as client:
        started = time.perf_counter()
        calls = [
            _stream(client, started, max_tokens, chat_messages(first_prompt + i))
            for i in range(count)
        ]
        streams = await asyncio.gather(*calls)
    return LoadResult(streams, max(s.finished_s for s in streams))


async def _stream(
    client: httpx.AsyncClient, started: float, max_tokens: int, messages: list[dict]
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
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise StreamFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        async for chunk in _chunks(response.aiter_lines()):
            text, usage = _content(chunk), chunk.get("usage")
            if text and ttft is None:
                ttft = time.perf_counter() - started
            parts.append(text)
            if usage:
                tokens = usage["completion_tokens"]
    finished = time.perf_counter() - started
    return StreamResult(ttft, finished, tokens, "".join(parts))


async def _chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict]:
    async for line in lines:
        if not line.startswith(_DATA):
            continue
        data = line.removeprefix(_DATA)
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise StreamFailed(chunk["error"].get("message", "error in stream"))
        yield chunk


def _content(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return choices[0].get("delta", {}).get("content") or ""
