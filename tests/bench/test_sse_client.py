"""The benchmark's lean streaming client against a live server of a tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.http_load import run_load
from bench.prompt import chat_messages
from bench.server_process import SERVED_NAME
from bench.sse_client import StreamFailed, post_events
from engine import Engine
from server.settings import Settings
from tests.server.tiny_server import live_server, open_tiny_engine, save_tiny_model

CHAT = "/v1/chat/completions"
TOKENS = 6


@pytest.fixture(scope="module")
def base_url(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path
) -> Iterator[str]:
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny"), smollm2_dir)
    engine: Engine = open_tiny_engine(folder, max_batch=4)
    settings = Settings(
        served_model_name=SERVED_NAME, home=tmp_path_factory.mktemp("home")
    )
    try:
        with live_server(settings, engine) as url:
            yield url
    finally:
        engine.shutdown()


def _body(stream: bool, **fields) -> dict:
    body = {
        "model": SERVED_NAME,
        "messages": chat_messages(0),
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": stream,
    }
    return body | fields


async def _events(base_url: str, body: dict) -> list[dict]:
    return [chunk async for chunk in post_events(base_url, CHAT, body)]


def test_streamed_chunks_carry_the_whole_answer(base_url: str) -> None:
    whole = httpx.post(f"{base_url}{CHAT}", json=_body(False), timeout=60).json()
    body = _body(True, stream_options={"include_usage": True})
    chunks = asyncio.run(_events(base_url, body))
    text = "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in chunks
        if chunk["choices"]
    )
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS


def test_a_refused_request_fails_with_its_status(base_url: str) -> None:
    with pytest.raises(StreamFailed, match="HTTP 400"):
        asyncio.run(_events(base_url, _body(True, max_tokens=-1)))


def test_a_load_reads_every_stream_to_its_end(base_url: str) -> None:
    load = run_load(base_url, 3, TOKENS, timeout_s=120)
    assert [stream.completion_tokens for stream in load.streams] == [TOKENS] * 3
    assert all(stream.text for stream in load.streams)
    assert load.wall_s == max(stream.finished_s for stream in load.streams)
