"""Chat completions with several choices (``n``) against the scripted engine."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from engine.errors import QueueFullError

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
HELLO = {"role": "user", "content": "Say hello."}
TEXT = "Hello, world!"


def _post(client: TestClient, **fields: Any) -> Any:
    body = {"model": MODEL, "messages": [HELLO], "n": 3, **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def _chunks(body: str) -> list[dict[str, Any]]:
    data = [event.removeprefix("data: ") for event in body.split("\n\n")[:-1]]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def test_each_choice_has_its_own_index(client: TestClient) -> None:
    completion = _post(client).json()

    assert [choice["index"] for choice in completion["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == TEXT for c in completion["choices"])


def test_usage_counts_the_prompt_once_and_every_choice(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    usage = _post(client).json()["usage"]

    prompt_tokens = len(fake_engine.requests[0].prompt_ids)
    assert usage == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 3 * 4,
        "total_tokens": prompt_tokens + 12,
    }


def test_each_choice_is_an_engine_request_with_its_own_seed(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _post(client, seed=1)

    seeds = [request.params.seed for request in fake_engine.requests]
    assert seeds[0] == 1
    assert len(set(seeds)) == 3
    assert len({request.request_id for request in fake_engine.requests}) == 3


def test_stream_opens_each_choice_with_its_role_and_closes_it_with_a_finish(
    client: TestClient,
) -> None:
    chunks = _chunks(_post(client, stream=True).text)

    roles = [chunk["choices"][0] for chunk in chunks[:3]]
    assert [choice["index"] for choice in roles] == [0, 1, 2]
    assert all(
        choice["delta"] == {"role": "assistant", "content": ""} for choice in roles
    )
    finishes = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(choice["index"] for choice in finishes) == [0, 1, 2]
    assert all(choice["delta"] == {} for choice in finishes)


def test_stream_content_of_each_choice_adds_up(client: TestClient) -> None:
    chunks = _chunks(_post(client, stream=True).text)

    texts = ["", "", ""]
    for chunk in chunks:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == [TEXT] * 3


def test_stream_usage_counts_every_choice(client: TestClient) -> None:
    body = _post(client, stream=True, stream_options={"include_usage": True}).text

    chunks = _chunks(body)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_a_refused_choice_cancels_the_ones_already_queued(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    real_submit = fake_engine.submit

    def submit_two(request, sink):
        if len(fake_engine.requests) == 2:
            raise QueueFullError("2 requests are already waiting")
        return real_submit(request, sink)

    fake_engine.submit = submit_two
    body = {"model": MODEL, "messages": [HELLO], "n": 3}
    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 503
    assert all(handle.cancelled for handle in fake_engine.handles)


def test_more_choices_than_the_queue_holds_are_a_400_naming_n(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    n = fake_engine.options.max_queue + 1
    body = {"model": MODEL, "messages": [HELLO], "n": n}

    response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert not fake_engine.requests


@pytest.mark.parametrize(("prompts", "param"), [(1, "n"), (3, "prompt")])
def test_text_completion_of_more_sequences_than_the_queue_is_a_400(
    client: TestClient, fake_engine: FakeEngine, prompts: int, param: str
) -> None:
    n = fake_engine.options.max_queue // prompts + 1
    body = {"model": MODEL, "prompt": ["Hi"] * prompts, "n": n}

    response = client.post("/v1/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert not fake_engine.requests
