"""``POST /v1/completions`` against the scripted engine: shapes, prompts, errors."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from engine.errors import EngineStoppedError

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
TEXT = "Hello, world!"  # what the scripted engine answers


def _complete(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": "Say hello.", **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _error(client: TestClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"model": MODEL, "prompt": "Say hello.", **fields}
    response = client.post("/v1/completions", json=body)
    assert set(response.json()) == {"error"}, response.text
    return response.status_code, response.json()["error"]


def _data(body: str) -> list[str]:
    events = body.split("\n\n")
    assert events[-1] == ""
    assert all(event.startswith("data: ") for event in events[:-1])
    return [event.removeprefix("data: ") for event in events[:-1]]


def _stream(client: TestClient, **fields: Any) -> str:
    body = {"model": MODEL, "prompt": "Say hello.", "stream": True, **fields}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.text


def _chunks(body: str) -> list[dict[str, Any]]:
    return [json.loads(data) for data in _data(body) if data != "[DONE]"]


def test_completion_has_the_openai_shape(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    completion = _complete(client)

    prompt_tokens = len(fake_engine.requests[0].prompt_ids)
    assert completion["id"].startswith("cmpl-")
    assert completion["object"] == "text_completion"
    assert completion["model"] == MODEL
    assert completion["choices"] == [
        {"text": TEXT, "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert completion["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
    }


def test_text_prompt_is_tokenized_with_the_tokenizers_special_tokens(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _complete(client, prompt="The sky is")

    expected = fake_engine.tokenizer("The sky is")["input_ids"]
    assert fake_engine.requests[0].prompt_ids == expected


def test_token_id_prompt_goes_to_the_engine_as_is(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _complete(client, prompt=[5, 6, 7])

    assert fake_engine.requests[0].prompt_ids == [5, 6, 7]


@pytest.mark.parametrize(
    "prompt", [["one", "two", "three"], [[1, 2], [3], [4, 5, 6]]], ids=str
)
def test_each_prompt_of_a_list_is_its_own_choice_in_order(
    client: TestClient, fake_engine: FakeEngine, prompt: list[Any]
) -> None:
    completion = _complete(client, prompt=prompt, max_tokens=2)

    assert [c["index"] for c in completion["choices"]] == [0, 1, 2]
    submitted = [request.prompt_ids for request in fake_engine.requests]
    if isinstance(prompt[0], list):
        assert submitted == prompt
    assert completion["usage"]["prompt_tokens"] == sum(map(len, submitted))
    assert completion["usage"]["completion_tokens"] == 3 * 2


def test_n_choices_per_prompt_are_numbered_prompt_by_prompt(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    completion = _complete(client, prompt=[[1], [2, 3]], n=2, seed=5)

    assert [c["index"] for c in completion["choices"]] == [0, 1, 2, 3]
    assert [r.prompt_ids for r in fake_engine.requests] == [[1], [1], [2, 3], [2, 3]]
    seeds = [request.params.seed for request in fake_engine.requests]
    assert seeds[0] == seeds[2] == 5
    assert seeds[1] == seeds[3] != 5
    assert completion["usage"]["prompt_tokens"] == 3  # each prompt counted once


def test_echo_puts_the_prompt_before_the_text(client: TestClient) -> None:
    completion = _complete(client, prompt="Say hello.", echo=True)

    assert completion["choices"][0]["text"] == "Say hello." + TEXT


def test_echo_of_token_ids_decodes_them(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    ids = fake_engine.tokenizer("Good morning")["input_ids"]

    completion = _complete(client, prompt=ids, echo=True)

    assert completion["choices"][0]["text"] == "Good morning" + TEXT


def test_default_cap_is_openais_16_and_null_is_the_rest_of_the_context(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _complete(client)
    _complete(client, max_tokens=None)

    first, second = fake_engine.requests
    assert first.params.max_tokens == 16
    room = fake_engine.context_length - len(second.prompt_ids)
    assert second.params.max_tokens == room


def test_max_tokens_beyond_the_context_is_clamped(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _complete(client, prompt=[1] * 500, max_tokens=1000)

    assert fake_engine.requests[0].params.max_tokens == 12


def test_sampling_fields_reach_the_engine(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _complete(
        client,
        temperature=0.5,
        top_p=0.9,
        top_k=20,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        logit_bias={"42": -100, "7": 3},
        seed=11,
        stop="\n",
        logprobs=2,
    )

    params = fake_engine.requests[0].params
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (
        0.5,
        0.9,
        20,
        0.05,
    )
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert params.repetition_penalty == 1.2
    assert params.logit_bias == ((7, 3.0), (42, -100.0))
    assert (params.seed, params.stop, params.logprobs) == (11, ("\n",), 2)


def test_stream_bytes_are_text_chunks_then_finish_then_done(
    client: TestClient,
) -> None:
    body = _stream(client)

    first = _chunks(body)[0]
    head = (
        f'data: {{"id":"{first["id"]}","object":"text_completion",'
        f'"created":{first["created"]},"model":"{MODEL}",'
        '"system_fingerprint":null,"choices":['
    )
    choices = [
        *(
            f'{{"text":"{text}","index":0,"logprobs":null,"finish_reason":null}}'
            for text in ["Hello", ",", " world", "!"]
        ),
        '{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}',
    ]
    expected = "".join(f"{head}{choice}]}}\n\n" for choice in choices)
    assert body == expected + "data: [DONE]\n\n"


def test_stream_with_usage_ends_with_a_usage_chunk(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    chunks = _chunks(_stream(client, stream_options={"include_usage": True}))

    prompt_tokens = len(fake_engine.requests[0].prompt_ids)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == prompt_tokens + 4
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_stream_echo_comes_first(client: TestClient) -> None:
    chunks = _chunks(_stream(client, prompt="Say hello.", echo=True))

    assert chunks[0]["choices"][0]["text"] == "Say hello."
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Say hello." + TEXT


def test_stream_of_several_choices_finishes_each(client: TestClient) -> None:
    chunks = _chunks(_stream(client, n=3, stream_options={"include_usage": True}))

    texts = {index: "" for index in range(3)}
    finishes = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        assert choice["index"] not in finishes, "text after the finish"
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {index: TEXT for index in range(3)}
    assert finishes == {index: "stop" for index in range(3)}
    assert chunks[-1]["usage"]["completion_tokens"] == 3 * 4


def test_engine_error_mid_stream_sends_an_error_event_and_ends(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    fake_engine.error = EngineStoppedError("the engine was shut down")

    data = _data(_stream(client))

    assert json.loads(data[0])["choices"][0]["text"] == "Hello"
    assert json.loads(data[-1])["error"]["code"] == "engine_stopped"
    assert "[DONE]" not in data


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "the end"}, "suffix"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": ["a", [1]]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"echo": True, "logprobs": 1}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logit_bias": {"1": -101}}, "logit_bias.1"),
    ],
)
def test_invalid_field_is_a_400_naming_it(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    status, error = _error(client, **fields)

    assert (status, error["type"], error["param"]) == (
        400,
        "invalid_request_error",
        param,
    )


def test_suffix_is_refused_as_unsupported(client: TestClient) -> None:
    _, error = _error(client, suffix="the end")

    assert "suffix is not supported" in error["message"]


def test_empty_suffix_is_accepted(client: TestClient) -> None:
    assert _complete(client, suffix="")["choices"][0]["text"] == TEXT


@pytest.mark.parametrize(
    "prompt", ["word " * 1000, [1] * 600, ["short", "word " * 200_000]], ids=len
)
def test_prompt_over_the_context_is_context_length_exceeded(
    client: TestClient, prompt: Any
) -> None:
    status, error = _error(client, prompt=prompt)

    assert (status, error["code"], error["param"]) == (
        400,
        "context_length_exceeded",
        "prompt",
    )


@pytest.mark.parametrize("echo", [False, True])
def test_token_id_outside_the_vocabulary_names_its_place(
    client: TestClient, echo: bool
) -> None:
    status, error = _error(client, prompt=[[1, 2], [3, -1]], echo=echo)

    assert (status, error["param"]) == (400, "prompt")
    assert "prompt[1] is -1" in error["message"]


def test_unknown_model_is_a_404(client: TestClient) -> None:
    status, error = _error(client, model="no-such-model")

    assert (status, error["code"]) == (404, "model_not_found")


def test_body_without_prompt_is_a_400_naming_it(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"model": MODEL})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_body_that_is_not_json_is_a_400_in_the_openai_shape(client: TestClient) -> None:
    response = client.post(
        "/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
