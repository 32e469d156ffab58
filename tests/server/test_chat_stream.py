"""Streamed chat completions: the exact chunks OpenAI clients parse."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine.errors import EngineStoppedError
from server.app import create_app
from server.settings import Settings

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello."}],
    "stream": True,
}


def _stream(client: TestClient, **fields: Any) -> str:
    response = client.post("/v1/chat/completions", json={**BODY, **fields})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.text


def _data(body: str) -> list[str]:
    events = body.split("\n\n")
    assert events[-1] == ""
    assert all(event.startswith("data: ") for event in events[:-1])
    return [event.removeprefix("data: ") for event in events[:-1]]


def _chunks(body: str) -> list[dict[str, Any]]:
    return [json.loads(data) for data in _data(body) if data != "[DONE]"]


def _expected_line(first: dict[str, Any], choice: str) -> str:
    return (
        f'data: {{"id":"{first["id"]}","object":"chat.completion.chunk",'
        f'"created":{first["created"]},"model":"{MODEL}",'
        f'"system_fingerprint":null,"choices":[{choice}]}}\n\n'
    )


def test_stream_bytes_are_role_then_content_then_finish_then_done(
    client: TestClient,
) -> None:
    body = _stream(client)

    first = _chunks(body)[0]
    choices = [
        '{"index":0,"delta":{"role":"assistant","content":""},'
        '"logprobs":null,"finish_reason":null}',
        *(
            f'{{"index":0,"delta":{{"content":"{text}"}},'
            '"logprobs":null,"finish_reason":null}'
            for text in ["Hello", ",", " world", "!"]
        ),
        '{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}',
    ]
    expected = "".join(_expected_line(first, choice) for choice in choices)
    assert body == expected + "data: [DONE]\n\n"


def test_without_include_usage_no_chunk_has_usage(client: TestClient) -> None:
    chunks = _chunks(_stream(client))

    assert all("usage" not in chunk for chunk in chunks)


def test_include_usage_adds_a_last_chunk_with_usage_and_no_choices(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    body = _stream(client, stream_options={"include_usage": True})

    chunks = _chunks(body)
    prompt_tokens = len(fake_engine.requests[0].prompt_ids)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
    }
    assert _data(body)[-1] == "[DONE]"


def test_include_usage_sets_usage_null_on_every_other_chunk(
    client: TestClient,
) -> None:
    chunks = _chunks(_stream(client, stream_options={"include_usage": True}))

    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_cut_by_max_tokens_streams_finish_reason_length(client: TestClient) -> None:
    chunks = _chunks(_stream(client, max_tokens=3))

    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert [chunk["choices"][0]["delta"].get("content") for chunk in chunks] == [
        "",
        "Hello",
        ",",
        " world",
        None,
    ]


def test_engine_error_mid_stream_sends_an_error_event_and_ends(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    fake_engine.error = EngineStoppedError("the engine was shut down")

    data = _data(_stream(client))

    assert json.loads(data[-1]) == {
        "error": {
            "message": "the engine is not running: the engine was shut down",
            "type": "server_error",
            "param": None,
            "code": "engine_stopped",
        }
    }
    assert "[DONE]" not in data


def test_unexpected_error_mid_stream_is_an_internal_error_event(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    fake_engine.error = RuntimeError("CUDA out of memory")

    error = json.loads(_data(_stream(client))[-1])["error"]

    assert error["code"] == "internal_error"
    assert "CUDA" not in error["message"]


async def _call(
    app: FastAPI, body: dict[str, Any], leave_after_s: float
) -> list[dict[str, Any]]:
    """Runs one request straight through ASGI, the client leaving after a while."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": json.dumps(body).encode()}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        if leave_after_s:
            await asyncio.sleep(leave_after_s)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return sent


def test_client_leaving_a_stream_cancels_the_request(
    settings: Settings, fake_engine: FakeEngine
) -> None:
    fake_engine.stall_after_first = True

    asyncio.run(_call(create_app(settings, fake_engine), BODY, leave_after_s=0.2))

    assert fake_engine.handles[0].cancelled


def test_client_leaving_a_whole_completion_cancels_the_request(
    settings: Settings, fake_engine: FakeEngine
) -> None:
    fake_engine.stall_after_first = True
    body = {**BODY, "stream": False}

    sent = asyncio.run(_call(create_app(settings, fake_engine), body, 0.2))

    assert fake_engine.handles[0].cancelled
    assert sent[0]["status"] == 499


def test_client_gone_before_the_first_chunk_cancels_the_request(
    settings: Settings, fake_engine: FakeEngine
) -> None:
    fake_engine.stall_after_first = True

    asyncio.run(_call(create_app(settings, fake_engine), BODY, leave_after_s=0))

    assert fake_engine.handles[0].cancelled
