"""Logprobs, penalties and seeds through the worker, on a tiny random model."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from engine.engine import Engine
from engine.request import (
    Event,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from tests.engine.test_engine import make_engine
from tests.engine.tiny_models import CONFIGS, build_model, save_model

PROMPT = [5, 17, 42, 99, 3]
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(build_model(CONFIGS["llama"]), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def engine(folder: Path, smollm2_tokenizer) -> Iterator[Engine]:
    engine = make_engine(folder, smollm2_tokenizer, max_batch=4)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def reference(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def run(engine: Engine, **params) -> tuple[list[TokenLogprob], FinishEvent]:
    events: queue.Queue[Event] = queue.Queue()
    sampling = SamplingParams(**{"max_tokens": 6, "temperature": 0.0, **params})
    engine.submit(GenerationRequest("r", PROMPT, sampling), events.put)
    entries: list[TokenLogprob] = []
    while isinstance(event := events.get(timeout=TIMEOUT_S), TokenEvent):
        entries.extend(event.logprobs)
    assert isinstance(event, FinishEvent)
    return entries, event


def test_logprobs_equal_log_softmax_of_transformers_logits(
    engine: Engine, reference: PreTrainedModel
) -> None:
    entries, finish = run(engine, logprobs=3)
    generated = [entry.token_id for entry in entries]

    with torch.no_grad():
        logits = reference(torch.tensor([PROMPT + generated])).logits[0]
    # The row before each generated token is the distribution it came from.
    expected = torch.log_softmax(logits[len(PROMPT) - 1 : -1].float(), dim=-1)

    assert len(entries) == finish.completion_tokens == 6
    for entry, row in zip(entries, expected, strict=True):
        top = torch.topk(row, 3)
        assert entry.logprob == pytest.approx(row[entry.token_id].item(), abs=1e-4)
        assert [token for token, _ in entry.top] == top.indices.tolist()
        got = torch.tensor([logprob for _, logprob in entry.top])
        assert torch.allclose(got, top.values, atol=1e-4)


def test_no_logprobs_unless_asked(engine: Engine) -> None:
    entries, _ = run(engine)
    assert entries == []


def test_logit_bias_steers_the_tokens_but_not_the_logprobs(engine: Engine) -> None:
    entries, _ = run(engine, logprobs=0, logit_bias=((7, 100.0),))

    assert [entry.token_id for entry in entries] == [7] * 6
    # Reported of the raw logits: the model itself did not favour token 7.
    assert all(entry.logprob < -0.5 for entry in entries)


def test_frequency_penalty_changes_a_repeating_greedy_answer(engine: Engine) -> None:
    plain, _ = run(engine, logprobs=0, max_tokens=12)
    penalized, _ = run(engine, logprobs=0, max_tokens=12, frequency_penalty=2.0)
    plain_ids = [entry.token_id for entry in plain]
    penalized_ids = [entry.token_id for entry in penalized]

    assert len(set(plain_ids)) < len(plain_ids), "the greedy answer should repeat"
    assert len(set(penalized_ids)) > len(set(plain_ids))


def test_same_seed_gives_the_same_tokens(engine: Engine) -> None:
    first, _ = run(engine, logprobs=0, temperature=1.0, seed=42, max_tokens=10)
    second, _ = run(engine, logprobs=0, temperature=1.0, seed=42, max_tokens=10)
    other, _ = run(engine, logprobs=0, temperature=1.0, seed=43, max_tokens=10)

    def ids(entries: list[TokenLogprob]) -> list[int]:
        return [entry.token_id for entry in entries]

    assert ids(first) == ids(second)
    assert ids(first) != ids(other)
