"""The HTTP API over a real worker and a tiny random model with SmolLM2's vocabulary.

Fast enough to run everything the scripted engine cannot show: seeds, logprobs,
stop strings and split characters as the worker produces them, the context
running out, and a failure inside the worker after a stream began.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from transformers import LlamaConfig, PreTrainedTokenizerBase

import engine.engine as worker
from engine.engine import Engine
from server.app import create_app
from server.settings import Settings
from tests.engine.tiny_models import build_model, engine_on, save_model

MODEL = "tiny"
CONTEXT = 64
HELLO = [{"role": "user", "content": "Hi"}]


def _config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=CONTEXT,
        eos_token_id=None,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="module")
def engine(
    smollm2_tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Engine]:
    config = _config(len(smollm2_tokenizer))
    folder = save_model(build_model(config), tmp_path_factory.mktemp("tiny-vocab"))
    engine = engine_on(folder, smollm2_tokenizer, MODEL, max_batch=4)
    yield engine
    engine.shutdown()


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=tmp_path), engine)) as test_client:
        yield test_client


@pytest.fixture
def scripted(
    monkeypatch: pytest.MonkeyPatch, smollm2_tokenizer: PreTrainedTokenizerBase
):
    """Makes the worker 'sample' the tokens of a given text, in order."""

    def script(text: str) -> list[int]:
        ids = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens = iter(ids)
        monkeypatch.setattr(worker, "sample_next", lambda *_: next(tokens))
        return ids

    return script


def _post(client: TestClient, path: str, **fields: Any) -> dict[str, Any]:
    response = client.post(path, json={"model": MODEL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def _chat(client: TestClient, **fields: Any) -> dict[str, Any]:
    return _post(client, "/v1/chat/completions", messages=HELLO, **fields)


def _complete(client: TestClient, **fields: Any) -> dict[str, Any]:
    return _post(client, "/v1/completions", **fields)


def _events(client: TestClient, path: str, **fields: Any) -> list[Any]:
    body = {"model": MODEL, "stream": True, **fields}
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    data = [e.removeprefix("data: ") for e in response.text.split("\n\n")[:-1]]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


def _chunks(client: TestClient, path: str, **fields: Any) -> list[dict[str, Any]]:
    events = _events(client, path, **fields)
    assert events[-1] == "[DONE]"
    return events[:-1]


def _chat_deltas(chunks: list[dict[str, Any]], index: int = 0) -> list[str]:
    return [
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c["choices"] and c["choices"][0]["index"] == index
    ]


def _texts(chunks: list[dict[str, Any]], index: int = 0) -> list[str]:
    return [
        c["choices"][0]["text"]
        for c in chunks
        if c["choices"] and c["choices"][0]["index"] == index
    ]


def test_chat_stream_adds_up_to_the_whole_greedy_answer(client: TestClient) -> None:
    whole = _chat(client, temperature=0, max_tokens=12)
    chunks = _chunks(
        client, "/v1/chat/completions", messages=HELLO, temperature=0, max_tokens=12
    )

    assert "".join(_chat_deltas(chunks)) == whole["choices"][0]["message"]["content"]


def test_completion_stream_adds_up_to_the_whole_greedy_answer(
    client: TestClient,
) -> None:
    fields = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 12}
    whole = _complete(client, **fields)
    chunks = _chunks(client, "/v1/completions", **fields)

    assert "".join(_texts(chunks)) == whole["choices"][0]["text"]


def test_same_seed_gives_the_same_choices(client: TestClient) -> None:
    fields = {"n": 3, "temperature": 1.0, "seed": 1, "max_tokens": 8}
    first = [c["message"]["content"] for c in _chat(client, **fields)["choices"]]
    second = [c["message"]["content"] for c in _chat(client, **fields)["choices"]]
    chunks = _chunks(client, "/v1/chat/completions", messages=HELLO, **fields)
    streamed = ["".join(_chat_deltas(chunks, index)) for index in range(3)]

    assert first == second == streamed
    assert len(set(first)) == 3


def test_choice_zero_of_n_is_the_single_answer_for_the_seed(
    client: TestClient,
) -> None:
    fields = {"temperature": 1.0, "seed": 7, "max_tokens": 8}
    single = _complete(client, prompt="Hello", **fields)["choices"][0]["text"]
    several = _complete(client, prompt="Hello", n=2, **fields)["choices"]

    assert several[0]["text"] == single


def test_chat_logprobs_list_each_token_with_its_alternatives(
    client: TestClient,
) -> None:
    completion = _chat(
        client, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )

    choice = completion["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == completion["usage"]["completion_tokens"] == 6
    assert all(len(entry["top_logprobs"]) == 3 for entry in entries)
    # Greedy: each token is the likeliest, so it leads its own alternatives.
    assert all(entry["top_logprobs"][0]["token"] == entry["token"] for entry in entries)
    joined = b"".join(bytes(entry["bytes"]) for entry in entries)
    assert joined.decode() == choice["message"]["content"]


def test_chat_logprobs_are_the_same_streamed(client: TestClient) -> None:
    fields = {"temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}
    whole = _chat(client, **fields)["choices"][0]["logprobs"]["content"]
    chunks = _chunks(client, "/v1/chat/completions", messages=HELLO, **fields)

    streamed = [
        entry
        for chunk in chunks
        if chunk["choices"] and chunk["choices"][0]["logprobs"]
        for entry in chunk["choices"][0]["logprobs"]["content"]
    ]
    assert streamed == whole


def test_no_logprobs_unless_asked(client: TestClient) -> None:
    assert _chat(client, temperature=0, max_tokens=3)["choices"][0]["logprobs"] is None


def test_legacy_logprobs_offsets_point_at_each_token(client: TestClient) -> None:
    fields = {"prompt": "The sky", "temperature": 0, "max_tokens": 8, "logprobs": 2}
    choice = _complete(client, **fields)["choices"][0]

    lists = choice["logprobs"]
    text = choice["text"]
    assert len(lists["tokens"]) == len(lists["token_logprobs"]) == 8
    for token, offset in zip(lists["tokens"], lists["text_offset"], strict=True):
        assert text[offset : offset + len(token)] == token
    # The two likeliest, and the sampled token (greedy: one of them).
    assert all(len(top) == 2 for top in lists["top_logprobs"])
    streamed = _chunks(client, "/v1/completions", **fields)
    offsets = [
        o
        for c in streamed
        for o in (c["choices"][0]["logprobs"] or {}).get("text_offset", [])
    ]
    assert offsets == lists["text_offset"]


def test_split_characters_never_reach_a_delta(client: TestClient, scripted) -> None:
    text = "héllo 🙂 wörld, 世界"
    count = len(scripted(text))

    chunks = _chunks(client, "/v1/chat/completions", messages=HELLO, max_tokens=count)
    deltas = _chat_deltas(chunks)

    assert "".join(deltas) == text
    assert all("\ufffd" not in delta for delta in deltas)


def test_split_characters_never_reach_a_completion_chunk(
    client: TestClient, scripted
) -> None:
    text = "🙂🙂 ñ"
    count = len(scripted(text))

    texts = _texts(_chunks(client, "/v1/completions", prompt="x", max_tokens=count))

    assert "".join(texts) == text
    assert all("\ufffd" not in piece for piece in texts)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stop_string_is_held_back_while_it_forms(
    client: TestClient, scripted, path: str
) -> None:
    scripted("A B C D E F G H I J")
    fields = {"messages": HELLO} if "chat" in path else {"prompt": "x"}

    chunks = _chunks(client, path, stop="F G H", max_tokens=10, **fields)
    pieces = _chat_deltas(chunks) if "chat" in path else _texts(chunks)

    assert "".join(pieces) == "A B C D E "
    assert all("F" not in piece for piece in pieces)
    assert [c for c in chunks if c["choices"][0]["finish_reason"]][0]["choices"][0][
        "finish_reason"
    ] == "stop"


def test_plain_string_stop_cuts_a_completion_at_the_newline(
    client: TestClient, scripted
) -> None:
    scripted("first line\nsecond line")

    choice = _complete(client, prompt="x", stop="\n", max_tokens=10)["choices"][0]

    assert (choice["text"], choice["finish_reason"]) == ("first line", "stop")


def test_completion_cap_past_the_context_ends_with_length(client: TestClient) -> None:
    completion = _complete(client, prompt=[7] * (CONTEXT - 4), max_tokens=1000)

    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 4
    assert completion["usage"]["total_tokens"] == CONTEXT


def test_chat_cap_past_the_context_ends_with_length(client: TestClient) -> None:
    completion = _chat(client, max_tokens=1000, temperature=0)

    usage = completion["usage"]
    assert completion["choices"][0]["finish_reason"] == "length"
    assert usage["total_tokens"] == CONTEXT


def test_prompt_filling_the_context_is_context_length_exceeded(
    client: TestClient,
) -> None:
    body = {"model": MODEL, "prompt": [7] * CONTEXT}
    response = client.post("/v1/completions", json=body)

    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (
        400,
        "context_length_exceeded",
        "prompt",
    )


def test_worker_failure_mid_stream_ends_it_with_an_error_and_others_go_on(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sweep = engine.runner.sweep
    calls = {"count": 0}

    def failing_sweep(inputs):
        calls["count"] += 1
        if calls["count"] == 4:  # after a few tokens went out
            raise RuntimeError("device lost")
        return real_sweep(inputs)

    monkeypatch.setattr(engine.runner, "sweep", failing_sweep)
    events = _events(
        client, "/v1/chat/completions", messages=HELLO, max_tokens=20, temperature=0
    )

    assert "[DONE]" not in events
    assert any(_chat_deltas(events[:-1]))
    assert events[-1] == {
        "error": {
            "message": "internal error (RuntimeError); see the server log",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert _chat(client, max_tokens=3)["choices"][0]["finish_reason"] == "length"


def test_a_kv_budget_below_the_context_is_the_context_served(
    smollm2_tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    config = _config(len(smollm2_tokenizer))
    folder = save_model(build_model(config), tmp_path / "model")
    small = engine_on(folder, smollm2_tokenizer, MODEL, max_batch=1, kv_tokens=40)
    try:
        with TestClient(create_app(Settings(home=tmp_path), small)) as client:
            model = client.get(f"/v1/models/{MODEL}").json()
            counted = client.post("/tokenize", json={"model": MODEL, "prompt": "a"})
            refused = client.post(
                "/v1/completions", json={"model": MODEL, "prompt": [9] * 45}
            )
    finally:
        small.shutdown()

    assert model["context_length"] == 40
    assert counted.json()["max_model_len"] == 40
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
