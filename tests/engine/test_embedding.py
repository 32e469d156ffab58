"""Embedding requests: a prompt's pooled final hidden states, in shared sweeps."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from engine.checkpoint import Checkpoint
from engine.engine import Engine
from engine.errors import InvalidRequestError
from engine.options import EngineOptions
from engine.request import (
    EmbeddingEvent,
    EmbeddingRequest,
    Event,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from engine.runner import ModelRunner, SweepInput
from engine.skeleton import build_skeleton
from tests.engine.tiny_models import CONFIGS, build_model, save_model

TIMEOUT_S = 60
PROMPT = [5, 17, 42, 99, 3]
LONG_INPUT = [(7 * i + 3) % 320 for i in range(40)]  # more than two KV blocks


def make_engine(
    folder: Path, tokenizer, name: str = "llama", kv_tokens: int | None = None, **knobs
) -> Engine:
    options = EngineOptions(torch.device("cpu"), torch.float32, **knobs)
    runner = ModelRunner(
        build_skeleton(CONFIGS[name]),
        Checkpoint(folder),
        options.device,
        options.dtype,
        options.prefetch_depth,
    )
    return Engine("tiny", tokenizer, runner, options, frozenset(), kv_tokens)


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    return build_model(CONFIGS["llama"])


@pytest.fixture(scope="module")
def folder(model: PreTrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(model, tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def engine(folder: Path, smollm2_tokenizer) -> Iterator[Engine]:
    engine = make_engine(folder, smollm2_tokenizer, max_batch=4)
    yield engine
    engine.shutdown()


def reference(model: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    """transformers' own final states (after the final norm), averaged."""
    with torch.no_grad():
        states = model.get_decoder()(torch.tensor([ids])).last_hidden_state
    return states[0].mean(dim=0)


def embed(engine: Engine, ids: list[int], request_id: str = "e") -> queue.Queue:
    events: queue.Queue[Event] = queue.Queue()
    engine.submit(EmbeddingRequest(request_id, ids), events.put)
    return events


def vector_of(events: queue.Queue) -> torch.Tensor:
    event = events.get(timeout=TIMEOUT_S)
    assert isinstance(event, EmbeddingEvent), event
    return torch.tensor(event.vector)


def generate(engine: Engine, max_tokens: int = 12) -> queue.Queue:
    events: queue.Queue[Event] = queue.Queue()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    engine.submit(GenerationRequest("g", PROMPT, params), events.put)
    return events


def text_of(events: queue.Queue) -> str:
    pieces = []
    while isinstance(event := events.get(timeout=TIMEOUT_S), TokenEvent):
        pieces.append(event.text)
    return "".join(pieces)


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma3"])
def test_vector_is_the_mean_of_transformers_last_hidden_state(
    name: str, tmp_path: Path, smollm2_tokenizer
) -> None:
    model = build_model(CONFIGS[name])
    engine = make_engine(save_model(model, tmp_path), smollm2_tokenizer, name)
    try:
        vector = vector_of(embed(engine, LONG_INPUT))
    finally:
        engine.shutdown()

    torch.testing.assert_close(vector, reference(model, LONG_INPUT), atol=1e-4, rtol=0)


def test_event_counts_the_input_tokens(engine: Engine) -> None:
    event = embed(engine, PROMPT).get(timeout=TIMEOUT_S)

    assert isinstance(event, EmbeddingEvent)
    assert (event.prompt_tokens, len(event.vector)) == (len(PROMPT), 64)


def test_input_in_chunks_gives_the_one_chunk_vector(
    engine: Engine, folder: Path, smollm2_tokenizer
) -> None:
    whole = vector_of(embed(engine, LONG_INPUT))
    chunked = make_engine(folder, smollm2_tokenizer, max_sweep_tokens=7)
    try:
        vector = vector_of(embed(chunked, LONG_INPUT))
    finally:
        chunked.shutdown()

    torch.testing.assert_close(vector, whole, atol=1e-5, rtol=0)
    assert chunked.num_sweeps == -(-len(LONG_INPUT) // 7)


def test_sharing_sweeps_changes_neither_answer_nor_vector(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    solo_text = text_of(generate(engine))
    solo_vector = vector_of(embed(engine, LONG_INPUT))
    real_sweep, mixed = engine.runner.sweep, []

    def watched_sweep(inputs: list[SweepInput]):
        wants = {item.wants_hidden for item in inputs}
        mixed.append(wants == {True, False})
        return real_sweep(inputs)

    monkeypatch.setattr(engine.runner, "sweep", watched_sweep)
    generating = generate(engine)
    embedding = embed(engine, LONG_INPUT)

    assert text_of(generating) == solo_text
    torch.testing.assert_close(vector_of(embedding), solo_vector, atol=1e-5, rtol=0)
    assert any(mixed)


def test_kv_blocks_are_free_once_the_vector_is_sent(engine: Engine) -> None:
    vector_of(embed(engine, LONG_INPUT))

    pool = engine.runner.kv_pool
    assert engine.kv_tokens_used == 0
    assert pool.num_free == pool.num_blocks > 0


def test_remembered_blocks_are_not_reused_for_an_embedding(
    engine: Engine, model: PreTrainedModel
) -> None:
    # A generation leaves the prompt's full blocks remembered for later prompts.
    params = SamplingParams(max_tokens=1, temperature=0.0)
    done: queue.Queue[Event] = queue.Queue()
    engine.submit(GenerationRequest("g", LONG_INPUT, params), done.put)
    text_of(done)
    reused = engine.runner.kv_pool.num_reused

    vector = vector_of(embed(engine, LONG_INPUT))

    assert engine.runner.kv_pool.num_reused == reused
    torch.testing.assert_close(vector, reference(model, LONG_INPUT), atol=1e-4, rtol=0)


def test_preempted_embedding_starts_its_sum_again(
    folder: Path, smollm2_tokenizer, model: PreTrainedModel
) -> None:
    # The generation outgrows the budget while the embedding runs in small
    # chunks beside it, so the embedding gives its cache back and runs again.
    engine = make_engine(
        folder, smollm2_tokenizer, kv_tokens=60, max_batch=2, max_sweep_tokens=3
    )
    try:
        generating = generate(engine, max_tokens=50)
        embedding = embed(engine, LONG_INPUT)
        vector = vector_of(embedding)
        text_of(generating)
    finally:
        engine.shutdown()

    assert engine.num_preempted > 0
    torch.testing.assert_close(vector, reference(model, LONG_INPUT), atol=1e-4, rtol=0)


@pytest.mark.parametrize("ids", [[], [1] * 257, [5, 320]])
def test_bad_input_is_refused_naming_input(engine: Engine, ids: list[int]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        engine.submit(EmbeddingRequest("bad", ids), lambda event: None)

    assert caught.value.param == "input"


def test_input_may_fill_the_whole_context(engine: Engine) -> None:
    vector = vector_of(embed(engine, [1] * engine.context_length))

    assert vector.shape == (64,)
