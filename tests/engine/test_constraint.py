"""The constraint seam: masked rows, accepted tokens, a grammar that completes."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.engine import Engine
from engine.errors import InvalidRequestError
from engine.request import (
    ErrorEvent,
    Event,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from tests.engine.test_engine import PROMPT, TIMEOUT_S, make_engine
from tests.engine.tiny_models import CONFIGS, build_model, save_model


class Script:
    """A grammar that admits exactly one sequence of token ids."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.accepted: list[int] = []

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        allowed[self.ids[len(self.accepted)]] = True
        return logits.masked_fill(~allowed, float("-inf"))

    def accept(self, token_id: int) -> None:
        self.accepted.append(token_id)

    @property
    def is_finished(self) -> bool:
        return len(self.accepted) == len(self.ids)


@pytest.fixture
def engine(tmp_path: Path, smollm2_tokenizer) -> Iterator[Engine]:
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path)
    engine = make_engine(folder, smollm2_tokenizer, max_batch=4, max_queue=4)
    yield engine
    engine.shutdown()


def run(engine: Engine, request: GenerationRequest) -> tuple[list[Event], Event]:
    events: queue.Queue[Event] = queue.Queue()
    engine.submit(request, events.put)
    tokens = []
    while isinstance(event := events.get(timeout=TIMEOUT_S), TokenEvent):
        tokens.append(event)
    return tokens, event


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def test_constrained_request_generates_only_what_the_grammar_admits(
    engine: Engine,
) -> None:
    script = Script([7, 300, 12])
    request = GenerationRequest("r", PROMPT, greedy(10), lambda: script)

    run(engine, request)

    assert script.accepted == [7, 300, 12]


def test_finished_grammar_ends_the_request_with_stop(engine: Engine) -> None:
    request = GenerationRequest("r", PROMPT, greedy(10), lambda: Script([7, 8]))

    _, finish = run(engine, request)

    assert finish == FinishEvent("stop", len(PROMPT), 2)


def test_mask_applies_under_sampling_too(engine: Engine) -> None:
    script = Script([40, 41, 42, 43])
    params = SamplingParams(max_tokens=10, temperature=1.5, seed=3)

    run(engine, GenerationRequest("r", PROMPT, params, lambda: script))

    assert script.accepted == [40, 41, 42, 43]


def test_every_request_gets_its_own_constraint(engine: Engine) -> None:
    made: list[Script] = []

    def factory() -> Script:
        made.append(Script([9, 10]))
        return made[-1]

    for _ in range(2):
        run(engine, GenerationRequest("r", PROMPT, greedy(10), factory))

    assert [script.accepted for script in made] == [[9, 10], [9, 10]]


def test_unconstrained_request_is_unchanged_beside_a_constrained_one(
    engine: Engine,
) -> None:
    solo = run(engine, GenerationRequest("a", PROMPT, greedy(6)))[1]
    constrained = GenerationRequest("b", PROMPT, greedy(6), lambda: Script([1] * 6))
    events: queue.Queue[Event] = queue.Queue()
    engine.submit(constrained, events.put)

    beside = run(engine, GenerationRequest("a", PROMPT, greedy(6)))[1]

    assert beside == solo


def test_bias_and_penalties_never_bring_back_a_masked_token(engine: Engine) -> None:
    script = Script([7, 300, 12])
    params = SamplingParams(
        max_tokens=10,
        temperature=0.0,
        logit_bias=((5, 100.0),),
        presence_penalty=-2.0,
        repetition_penalty=0.5,
    )

    run(engine, GenerationRequest("r", PROMPT, params, lambda: script))

    assert script.accepted == [7, 300, 12]


def test_logprobs_under_a_grammar_are_of_the_models_own_logits(
    engine: Engine,
) -> None:
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=3)
    [free] = run(engine, GenerationRequest("a", PROMPT, params))[0][0].logprobs
    forced = GenerationRequest("b", PROMPT, params, lambda: Script([300]))

    [entry] = run(engine, forced)[0][0].logprobs

    assert entry.token_id == 300
    assert [token for token, _ in entry.top] == [token for token, _ in free.top]
    assert [lp for _, lp in entry.top] == pytest.approx([lp for _, lp in free.top])


class Failing(Script):
    """A grammar that breaks down after its script, as an outgrown parser does."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        if len(self.accepted) == len(self.ids):
            raise InvalidRequestError("the grammar failed", "response_format")
        return super().mask(logits)

    @property
    def is_finished(self) -> bool:
        return False


def test_a_grammar_failing_midway_ends_its_request_alone_without_a_traceback(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    solo = run(engine, GenerationRequest("a", PROMPT, greedy(6)))[1]
    failing = GenerationRequest("b", PROMPT, greedy(6), lambda: Failing([3, 4]))
    events: queue.Queue[Event] = queue.Queue()
    engine.submit(failing, events.put)

    beside = run(engine, GenerationRequest("a", PROMPT, greedy(6)))[1]
    while isinstance(last := events.get(timeout=TIMEOUT_S), TokenEvent):
        pass

    assert beside == solo
    assert isinstance(last, ErrorEvent)
    assert last.error.param == "response_format"
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refused and all(r.exc_info is None for r in refused)
