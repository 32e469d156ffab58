"""``POST /tokenize`` and ``POST /detokenize``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Say hello."}]


def _ok(client: TestClient, path: str, **body: Any) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _error(client: TestClient, path: str, **body: Any) -> tuple[int, dict[str, Any]]:
    response = client.post(path, json=body)
    assert set(response.json()) == {"error"}, response.text
    return response.status_code, response.json()["error"]


def test_tokenize_a_prompt(client: TestClient, fake_engine: FakeEngine) -> None:
    answer = _ok(client, "/tokenize", model=MODEL, prompt="Hello world")

    expected = fake_engine.tokenizer("Hello world")["input_ids"]
    assert answer == {
        "tokens": expected,
        "count": len(expected),
        "max_model_len": fake_engine.context_length,
    }


def test_tokenize_messages_gives_the_chat_prompt(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    answer = _ok(client, "/tokenize", model=MODEL, messages=HELLO)
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO})

    assert answer["tokens"] == fake_engine.requests[0].prompt_ids


def test_tokenize_without_special_tokens(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    tokenizer = fake_engine.tokenizer
    answer = _ok(client, "/tokenize", prompt="Hi", add_special_tokens=False)

    assert answer["tokens"] == tokenizer("Hi", add_special_tokens=False)["input_ids"]


def test_detokenize_inverts_tokenize(client: TestClient) -> None:
    text = "Grüße, 世界 🙂"
    tokens = _ok(client, "/tokenize", model=MODEL, prompt=text)["tokens"]

    assert _ok(client, "/detokenize", model=MODEL, tokens=tokens) == {"prompt": text}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "messages"),
        ("/tokenize", {"prompt": "a", "messages": HELLO}, "messages"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {"messages": []}, "messages"),
        (
            "/tokenize",
            {"messages": HELLO, "add_special_tokens": True},
            "add_special_tokens",
        ),
        ("/detokenize", {}, "tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens.0"),
        ("/detokenize", {"tokens": [1, 10**9]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    client: TestClient, path: str, body: dict[str, Any], param: str
) -> None:
    status, error = _error(client, path, **body)

    assert (status, error["type"], error["param"]) == (
        400,
        "invalid_request_error",
        param,
    )


@pytest.mark.parametrize(
    ("path", "body"), [("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]})]
)
def test_unknown_model_is_a_404(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    status, error = _error(client, path, model="no-such-model", **body)

    assert (status, error["code"]) == (404, "model_not_found")
