"""The error boundary: every failure is an OpenAI error body with the right status."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from engine.errors import EngineStoppedError, QueueFullError

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
HELLO = {"role": "user", "content": "Say hello."}


def _post(client: TestClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"model": MODEL, "messages": [HELLO], **fields}
    response = client.post("/v1/chat/completions", json=body)
    return response.status_code, response.json()


def _error(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The error object, after checking the body has exactly the OpenAI shape."""
    assert set(body) == {"error"}, (status, body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_body_that_is_not_json_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )

    error = _error(response.status_code, response.json())
    assert response.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]


def test_body_sent_as_plain_text_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions",
        content=b'{"model": "x"}',
        headers={"content-type": "text/plain"},
    )

    error = _error(response.status_code, response.json())
    assert response.status_code == 400
    assert "application/json" in error["message"]


def test_missing_messages_is_a_400_naming_messages(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": MODEL})

    error = _error(response.status_code, response.json())
    assert response.status_code == 400
    assert error["param"] == "messages"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"five": 1}}, "logit_bias.five"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 1e-300}, "repetition_penalty"),
        ({"temperature": True}, "temperature"),
        ({"top_p": "0.5"}, "top_p"),
        ({"presence_penalty": True}, "presence_penalty"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0.type",
        ),
    ],
)
def test_invalid_field_is_a_400_naming_it(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    status, body = _post(client, **fields)

    assert (status, _error(status, body)["param"]) == (400, param)


def test_top_logprobs_without_logprobs_says_why(client: TestClient) -> None:
    status, body = _post(client, top_logprobs=2)

    assert "needs logprobs" in _error(status, body)["message"]


def test_unknown_model_is_a_404_model_not_found(client: TestClient) -> None:
    status, body = _post(client, model="no-such-model")

    error = _error(status, body)
    assert (status, error["code"], error["param"]) == (404, "model_not_found", "model")
    assert "no-such-model" in error["message"]


def test_prompt_longer_than_the_context_is_context_length_exceeded(
    client: TestClient,
) -> None:
    long_message = {"role": "user", "content": "word " * 1000}

    status, body = _post(client, messages=[long_message])

    error = _error(status, body)
    assert (status, error["code"], error["param"]) == (
        400,
        "context_length_exceeded",
        "messages",
    )


def test_huge_prompt_is_still_context_length_exceeded(client: TestClient) -> None:
    # 3.5 MB: just inside the default body limit (a larger body is a 413).
    huge_message = {"role": "user", "content": "word " * 700_000}

    status, body = _post(client, messages=[huge_message])

    assert (status, _error(status, body)["code"]) == (400, "context_length_exceeded")


def test_template_that_rejects_the_messages_is_a_400(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    tokenizer = fake_engine.tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'assistant' %}"
        "{{ raise_exception('Conversations must start with a user') }}{% endif %}"
    )
    try:
        status, body = _post(client, messages=[{"role": "assistant", "content": "Hi"}])
    finally:
        tokenizer.chat_template = original

    error = _error(status, body)
    assert (status, error["param"]) == (400, "messages")
    assert "Conversations must start with a user" in error["message"]


def test_full_queue_is_a_503_with_retry_after(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    fake_engine.submit_error = QueueFullError("64 requests are already waiting")

    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": [HELLO]}
    )

    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert _error(503, response.json())["code"] == "queue_full"


def test_stopped_engine_is_a_503(client: TestClient, fake_engine: FakeEngine) -> None:
    fake_engine.submit_error = EngineStoppedError("the engine is shutting down")

    status, body = _post(client)

    assert (status, _error(status, body)["code"]) == (503, "engine_stopped")


def test_engine_error_before_the_answer_is_a_500_logged_once(
    client: TestClient, fake_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    fake_engine.error = RuntimeError("sweep exploded")

    with caplog.at_level(logging.ERROR):
        status, body = _post(client)

    assert (status, _error(status, body)["code"]) == (500, "internal_error")
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1


def test_unknown_route_is_a_404_in_the_openai_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")

    error = _error(response.status_code, response.json())
    assert (response.status_code, error["code"]) == (404, "not_found")
    assert "/v1/nothing-here" in error["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 2**64}, "seed"),
        ({"max_tokens": "3"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_value_openai_refuses_is_a_400_naming_it(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    status, body = _post(client, **fields)
    assert status == 400
    assert _error(status, body)["param"].startswith(param)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": 5}, "tool_choice"),
        ({"logit_bias": {"abc": 1}}, "logit_bias.abc"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ],
)
def test_param_is_the_field_path_without_pydantic_type_names(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    status, body = _post(client, **fields)

    assert status == 400
    assert _error(status, body)["param"] == param


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty"])
def test_nan_is_refused_as_not_finite(client: TestClient, field: str) -> None:
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], '
    body += b'"%s": NaN}'
    response = client.post(
        "/v1/chat/completions",
        content=body % (MODEL.encode(), field.encode()),
        headers={"content-type": "application/json"},
    )

    error = _error(400, response.json())
    assert response.status_code == 400
    assert error["param"] == field
    assert "finite" in error["message"]


def test_health_fails_when_the_worker_is_gone(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    assert client.head("/health").status_code == 200
    fake_engine.is_alive = False
    assert client.get("/health").status_code == 503


def test_lone_surrogate_in_content_is_a_400(client: TestClient) -> None:
    # Only raw JSON can carry it: "\\ud83c" escapes half of a surrogate pair.
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud83c"}]}'
    response = client.post(
        "/v1/chat/completions",
        content=body % MODEL.encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert _error(400, response.json())["param"].startswith("messages.0.content")


# Request fields in raw JSON, where "S" stands for a lone surrogate ("\ud83c"),
# and the field the 400 names: a bad key is named by the object that holds it.
_HI = '{"role": "user", "content": "hi"}'
_CALL = '{"id": "S", "type": "function", "function": {"name": "f", "arguments": "{}"}}'
_SCHEMA = '{"name": "x", "schema": {"type": "object", "properties": {"S": {}}}}'
LONE_SURROGATES = [
    (
        "/v1/chat/completions",
        '"messages": [{"role": "user", "name": "S", "content": "x"}]',
        "messages.0.name",
    ),
    (
        "/v1/chat/completions",
        f'"messages": [{{"role": "assistant", "tool_calls": [{_CALL}]}}, {_HI}]',
        "messages.0.tool_calls.0.id",
    ),
    (
        "/v1/chat/completions",
        f'"messages": [{_HI}], "tools": [{{"type": "function", '
        '"function": {"name": "f", "description": "S"}}]',
        "tools.0.function.description",
    ),
    (
        "/v1/chat/completions",
        f'"messages": [{_HI}], '
        f'"response_format": {{"type": "json_schema", "json_schema": {_SCHEMA}}}',
        "response_format.json_schema.schema.properties",
    ),
    ("/v1/completions", '"prompt": ["ok", "S"]', "prompt.1"),
    ("/v1/embeddings", '"input": "S"', "input"),
    ("/tokenize", '"prompt": "S"', "prompt"),
]


@pytest.mark.parametrize(("route", "fields", "param"), LONE_SURROGATES)
def test_a_lone_surrogate_anywhere_is_a_400_naming_its_field(
    client: TestClient, route: str, fields: str, param: str
) -> None:
    fields = fields.replace('"S"', '"\\ud83c"')
    body = f'{{"model": "{MODEL}", {fields}}}'
    response = client.post(
        route, content=body.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert _error(400, response.json())["param"] == param


def test_system_turn_for_a_template_without_it_is_merged_not_refused(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    tokenizer = fake_engine.tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m.role }}: {{ m.content }}{% endfor %}"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    try:
        status, _ = _post(client, messages=messages)
    finally:
        tokenizer.chat_template = original

    prompt = tokenizer.decode(fake_engine.requests[-1].prompt_ids)
    assert (status, prompt) == (200, "user: Be brief.\n\nHi")
