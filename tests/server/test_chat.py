"""Non-streamed chat completions against the scripted engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
HELLO = {"role": "user", "content": "Say hello."}


def _chat(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [HELLO], **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_completion_has_the_openai_shape(client: TestClient) -> None:
    completion = _chat(client)

    assert completion["id"].startswith("chatcmpl-")
    assert completion["object"] == "chat.completion"
    assert isinstance(completion["created"], int)
    assert completion["model"] == MODEL
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world!"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]


def test_usage_counts_prompt_and_completion(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    usage = _chat(client)["usage"]

    prompt_tokens = len(fake_engine.requests[0].prompt_ids)
    assert usage == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
    }


def test_cut_by_max_tokens_finishes_with_length(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    completion = _chat(client, max_tokens=3)

    assert fake_engine.requests[0].params.max_tokens == 3
    assert completion["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_wins_over_max_tokens(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _chat(client, max_tokens=3, max_completion_tokens=2)

    assert fake_engine.requests[0].params.max_tokens == 2


def test_without_a_cap_the_rest_of_the_context_is_the_cap(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _chat(client)

    request = fake_engine.requests[0]
    room = fake_engine.context_length - len(request.prompt_ids)
    assert request.params.max_tokens == room


def test_sampling_fields_reach_the_engine(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _chat(client, temperature=0, top_p=0.5, seed=7, stop="\n")

    params = fake_engine.requests[0].params
    assert (params.temperature, params.top_p, params.seed) == (0.0, 0.5, 7)
    assert params.stop == ("\n",)


def test_prompt_is_the_chat_template_with_generation_prompt(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _chat(client)

    expected = fake_engine.tokenizer.apply_chat_template(
        [HELLO], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert fake_engine.requests[0].prompt_ids == list(expected)


def test_text_parts_are_joined_into_the_message(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]
    _chat(client, messages=[{"role": "user", "content": parts}])

    prompt = fake_engine.tokenizer.decode(fake_engine.requests[0].prompt_ids)
    assert "Say\nhello." in prompt


def test_unknown_fields_are_ignored(client: TestClient) -> None:
    completion = _chat(client, frequency_penalty=0.5, user="someone", logit_bias={})

    assert completion["choices"][0]["message"]["content"] == "Hello, world!"


def test_null_optional_fields_are_accepted(client: TestClient) -> None:
    completion = _chat(client, stream=None, n=None, stop=None, temperature=None)

    assert completion["object"] == "chat.completion"


def test_the_model_file_name_is_accepted_as_an_alias(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    settings = Settings(model="/models/SmolLM2.Q4_1.gguf", home=tmp_path)
    with TestClient(create_app(settings, fake_engine)) as client:
        completion = _chat(client, model="SmolLM2.Q4_1")

    assert completion["model"] == MODEL
