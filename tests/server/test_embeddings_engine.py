"""``POST /v1/embeddings`` over a real worker and a tiny random model.

The model has SmolLM2's vocabulary, so texts tokenize as they would for the
default model; its vectors are checked against transformers' own hidden states.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase

from engine.engine import Engine
from engine.runner import SweepInput
from server.app import create_app
from server.settings import Settings
from tests.engine.tiny_models import build_model, engine_on
from tests.server.tiny_server import live_server

MODEL = "tiny"
CONTEXT = 64
HIDDEN = 32
TEXT = "Layer by layer, the weights stream from the disk."
HELLO = [{"role": "user", "content": "Hi"}]
# Long enough for the chat to still be streaming when the embedding arrives.
SWEEP_DELAY_S = 0.02


@pytest.fixture(scope="module")
def model(smollm2_tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=len(smollm2_tokenizer),
        max_position_embeddings=CONTEXT,
        eos_token_id=None,
        tie_word_embeddings=True,
    )
    return build_model(config)


@pytest.fixture(scope="module")
def engine(
    model: PreTrainedModel,
    smollm2_tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Engine]:
    folder = tmp_path_factory.mktemp("tiny-embed")
    model.save_pretrained(folder)
    engine = engine_on(folder, smollm2_tokenizer, MODEL, max_batch=4)
    yield engine
    engine.shutdown()


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=tmp_path), engine)) as test_client:
        yield test_client


def reference(model: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    """transformers' last hidden state (after the final norm), mean-pooled, unit."""
    with torch.no_grad():
        states = model.get_decoder()(torch.tensor([ids])).last_hidden_state
    return torch.nn.functional.normalize(states[0].mean(dim=0), dim=0)


def _vectors(response: httpx.Response) -> list[torch.Tensor]:
    assert response.status_code == 200, response.text
    return [torch.tensor(item["embedding"]) for item in response.json()["data"]]


def _embed(client: TestClient | httpx.Client, **fields: Any) -> list[torch.Tensor]:
    return _vectors(client.post("/v1/embeddings", json={"model": MODEL, **fields}))


def test_vector_is_transformers_mean_pooled_and_normalized(
    client: TestClient,
    model: PreTrainedModel,
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    ids = smollm2_tokenizer(TEXT)["input_ids"]

    [vector] = _embed(client, input=TEXT)

    torch.testing.assert_close(vector, reference(model, ids), atol=1e-4, rtol=0)


def test_each_input_of_a_list_gets_its_own_vector(
    client: TestClient, model: PreTrainedModel
) -> None:
    inputs = [[5, 6, 7, 8], [900, 12], list(range(100, 140))]

    vectors = _embed(client, input=inputs)

    for vector, ids in zip(vectors, inputs, strict=True):
        torch.testing.assert_close(vector, reference(model, ids), atol=1e-4, rtol=0)


def test_dimensions_keep_the_first_components_at_unit_length(
    client: TestClient,
) -> None:
    [whole] = _embed(client, input=TEXT)
    [cut] = _embed(client, input=TEXT, dimensions=8)

    expected = torch.nn.functional.normalize(whole[:8], dim=0)
    torch.testing.assert_close(cut, expected, atol=1e-6, rtol=0)


def test_input_may_fill_the_context_but_not_exceed_it(client: TestClient) -> None:
    assert len(_embed(client, input=[7] * CONTEXT)) == 1
    response = client.post(
        "/v1/embeddings", json={"model": MODEL, "input": [7] * (CONTEXT + 1)}
    )

    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (
        400,
        "context_length_exceeded",
        "input",
    )


def test_kv_cache_is_empty_after_the_answer(client: TestClient, engine: Engine) -> None:
    _embed(client, input=[TEXT, "another one", "and a third"])

    # The answer leaves before the worker ends its sweep and retires the
    # inputs; on a loaded machine the test may ask in between.
    deadline = time.monotonic() + 10
    while engine.num_running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.kv_tokens_used == 0
    assert engine.num_running == 0


def _stream_chat(base_url: str, after_first: Callable[[], object] | None = None) -> str:
    """A streamed greedy chat answer; ``after_first`` runs after its first chunk."""
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
    }
    url = f"{base_url}/v1/chat/completions"
    pieces: list[str] = []
    with httpx.stream("POST", url, json=body, timeout=60) as reply:
        # Read lazily: the rest of the answer is still being computed.
        data = (line[6:] for line in reply.iter_lines() if line.startswith("data: "))
        for index, item in enumerate(data):
            if index == 1 and after_first:  # the role chunk, then the first token's
                after_first()
            if item != "[DONE]":
                pieces.append(json.loads(item)["choices"][0]["delta"].get("content"))
    return "".join(piece or "" for piece in pieces)


def test_embedding_beside_a_streamed_chat_changes_neither(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sweep, mixed = engine.runner.sweep, []

    def slow_watched_sweep(inputs: list[SweepInput]):
        mixed.append({item.wants_hidden for item in inputs} == {True, False})
        time.sleep(SWEEP_DELAY_S)
        return real_sweep(inputs)

    with live_server(Settings(home=tmp_path), engine) as base_url:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            solo_text = _stream_chat(base_url)
            [solo_vector] = _embed(http, input=TEXT)
            monkeypatch.setattr(engine.runner, "sweep", slow_watched_sweep)
            beside: list[torch.Tensor] = []
            text = _stream_chat(
                base_url, lambda: beside.extend(_embed(http, input=TEXT))
            )

    assert text == solo_text
    torch.testing.assert_close(beside[0], solo_vector, atol=1e-5, rtol=0)
    assert any(mixed)
