"""``POST /v1/embeddings`` over the scripted engine: shapes, formats and refusals."""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from engine.errors import QueueFullError
from engine.request import EmbeddingRequest

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
# The scripted engine's (3, 0, 4, 0), at unit length.
UNIT = [0.6, 0.0, 0.8, 0.0]


def _embed(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json={"model": MODEL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def _error(client: TestClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    response = client.post("/v1/embeddings", json={"model": MODEL, **fields})
    return response.status_code, response.json()["error"]


def test_a_text_gives_one_unit_vector_and_its_token_count(
    client: TestClient, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    tokens = len(smollm2_tokenizer("Hello there")["input_ids"])

    body = _embed(client, input="Hello there")

    assert body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": UNIT}],
        "model": MODEL,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def test_list_inputs_come_back_indexed_in_order(
    client: TestClient,
    fake_engine: FakeEngine,
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    texts = ["one", "two words", "and three words"]

    body = _embed(client, input=texts)

    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    sent = [request.prompt_ids for request in fake_engine.requests]
    assert sent == [smollm2_tokenizer(text)["input_ids"] for text in texts]
    assert body["usage"]["prompt_tokens"] == sum(len(ids) for ids in sent)


@pytest.mark.parametrize(
    ("given", "expected"), [([5, 6, 7], [[5, 6, 7]]), ([[5, 6], [7]], [[5, 6], [7]])]
)
def test_token_ids_are_embedded_as_given(
    client: TestClient,
    fake_engine: FakeEngine,
    given: list[Any],
    expected: list[list[int]],
) -> None:
    _embed(client, input=given)

    assert all(isinstance(r, EmbeddingRequest) for r in fake_engine.requests)
    assert [request.prompt_ids for request in fake_engine.requests] == expected


def test_base64_holds_the_same_little_endian_float32_values(
    client: TestClient,
) -> None:
    floats = _embed(client, input="Hi")["data"][0]["embedding"]
    encoded = _embed(client, input="Hi", encoding_format="base64")["data"][0]

    decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
    assert decoded.tolist() == pytest.approx(floats, abs=1e-7)


@pytest.mark.parametrize(("dimensions", "expected"), [(3, [0.6, 0.0, 0.8]), (1, [1.0])])
def test_dimensions_cut_the_vector_and_normalize_it_again(
    client: TestClient, dimensions: int, expected: list[float]
) -> None:
    body = _embed(client, input="Hi", dimensions=dimensions)

    assert body["data"][0]["embedding"] == pytest.approx(expected)


def test_user_and_unknown_fields_are_accepted(client: TestClient) -> None:
    body = _embed(client, input="Hi", user="someone", priority="low")

    assert body["data"][0]["embedding"] == pytest.approx(UNIT)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["fine", ""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [[1, 2], []]}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": [True]}, "input"),
        ({"input": [-1]}, "input"),
        ({"input": [[5], [10**9]]}, "input"),
        ({"input": "Hi", "dimensions": 0}, "dimensions"),
        ({"input": "Hi", "dimensions": 5}, "dimensions"),
        ({"input": "Hi", "encoding_format": "hex"}, "encoding_format"),
        ({}, "input"),
    ],
)
def test_bad_fields_are_a_400_naming_the_field(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    status, error = _error(client, **fields)

    assert (status, error["type"], error["param"]) == (
        400,
        "invalid_request_error",
        param,
    )


def test_unknown_model_is_a_404(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "gpt-4", "input": "Hi"})

    error = response.json()["error"]
    assert response.status_code == 404
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def test_text_longer_than_the_context_is_refused_on_input(client: TestClient) -> None:
    status, error = _error(client, input="word " * 1000)

    assert (status, error["code"], error["param"]) == (
        400,
        "context_length_exceeded",
        "input",
    )


def test_more_inputs_than_the_queue_holds_are_a_400(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    count = fake_engine.options.max_queue + 1

    status, error = _error(client, input=["x"] * count)

    assert (status, error["param"]) == (400, "input")
    assert not fake_engine.requests


def test_full_queue_is_a_503_with_retry_after(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    fake_engine.submit_error = QueueFullError("64 requests are already waiting")

    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "Hi"})

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "queue_full"
    assert "retry-after" in response.headers


def test_request_is_logged_and_counted_without_its_text(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "my bank password is hunter2"
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        tokens = _embed(client, input=[secret, "Hi"])["usage"]["prompt_tokens"]

    [line] = [r.getMessage() for r in caplog.records if "embd-" in r.getMessage()]
    assert f" 200 embedded prompt={tokens} completion=0 " in line
    assert secret not in caplog.text
    metrics = client.get("/metrics").text
    assert f"layerstream_prompt_tokens_total {float(tokens)}" in metrics
