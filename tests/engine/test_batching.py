"""Requests share sweeps: reads per sweep, invariance, joining, chunking, KV limits."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.checkpoint import Checkpoint
from engine.engine import Engine
from engine.options import EngineOptions
from engine.request import Event, GenerationRequest, SamplingParams, TokenEvent
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from tests.engine.tiny_models import CONFIGS, build_model, save_model

TIMEOUT_S = 60
PROMPTS = [
    [5, 17, 42, 99, 3],
    [9, 200, 31, 7, 7, 7, 64, 12, 1],
    [300, 2],
    list(range(40)),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(CONFIGS["llama"])
    return save_model(model, tmp_path_factory.mktemp("tiny"))


def make_engine(
    folder: Path,
    tokenizer,
    kv_tokens: int | None = None,
    worker_thread: bool = True,
    **knobs,
) -> Engine:
    options = EngineOptions(torch.device("cpu"), torch.float32, **knobs)
    runner = ModelRunner(
        build_skeleton(CONFIGS["llama"]),
        Checkpoint(folder),
        options.device,
        options.dtype,
        options.prefetch_depth,
    )
    return Engine(
        "tiny", tokenizer, runner, options, frozenset(), kv_tokens, worker_thread
    )


class Collector:
    """Gathers one request's text; may run a hook after its n-th token."""

    def __init__(self, hook: Callable[[], None] | None = None, after: int = 0) -> None:
        self.pieces: list[str] = []
        self.done = threading.Event()
        self._hook, self._after, self._count = hook, after, 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, TokenEvent):
            self.done.set()
            return
        self.pieces.append(event.text)
        self._count += 1
        if self._hook is not None and self._count == self._after:
            self._hook()

    def text(self) -> str:
        assert self.done.wait(TIMEOUT_S)
        return "".join(self.pieces)


def submit(engine: Engine, prompt: list[int], max_tokens: int, sink) -> None:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    engine.submit(GenerationRequest(str(id(sink)), prompt, params), sink)


def solo_texts(folder: Path, tokenizer, max_tokens: list[int], **knobs) -> list[str]:
    engine = make_engine(folder, tokenizer, **knobs)
    texts = []
    for prompt, count in zip(PROMPTS, max_tokens, strict=True):
        collector = Collector()
        submit(engine, prompt, count, collector)
        texts.append(collector.text())
    engine.shutdown()
    return texts


@pytest.mark.parametrize("requests", [1, 4, 9])
def test_each_layer_is_read_once_per_sweep(
    folder: Path, smollm2_tokenizer, requests: int
) -> None:
    engine = make_engine(folder, smollm2_tokenizer, max_batch=16)
    collectors = [Collector() for _ in range(requests)]
    for index, collector in enumerate(collectors):
        submit(engine, PROMPTS[index % len(PROMPTS)], 6, collector)
    for collector in collectors:
        collector.text()
    engine.shutdown()
    layers = len(engine.runner.layers)
    assert engine.runner.layer_reads == engine.num_sweeps * layers


def test_outputs_do_not_change_when_requests_join_and_leave(
    folder: Path, smollm2_tokenizer
) -> None:
    lengths = [12, 5, 9, 7]
    expected = solo_texts(folder, smollm2_tokenizer, lengths)
    engine = make_engine(folder, smollm2_tokenizer, max_batch=8)
    last = Collector()
    third = Collector(lambda: submit(engine, PROMPTS[3], lengths[3], last), after=2)
    second = Collector(lambda: submit(engine, PROMPTS[2], lengths[2], third), after=1)
    first = Collector(lambda: submit(engine, PROMPTS[1], lengths[1], second), after=3)
    submit(engine, PROMPTS[0], lengths[0], first)
    texts = [c.text() for c in (first, second, third, last)]
    engine.shutdown()
    assert texts == expected


def test_request_joining_eight_streams_gets_a_token_within_two_sweeps(
    folder: Path, smollm2_tokenizer
) -> None:
    engine = make_engine(folder, smollm2_tokenizer, max_batch=9)
    streams = [Collector() for _ in range(8)]
    for index, stream in enumerate(streams):
        submit(engine, PROMPTS[index % 3], 40, stream)
    first_token_sweep: queue.Queue[int] = queue.Queue()

    def newcomer(event: Event) -> None:
        if isinstance(event, TokenEvent) and first_token_sweep.empty():
            first_token_sweep.put(engine.num_sweeps)

    while engine.num_sweeps < 3:  # the eight are decoding by now
        threading.Event().wait(0.01)
    submitted_at = engine.num_sweeps
    submit(engine, PROMPTS[3], 4, newcomer)
    joined_after = first_token_sweep.get(timeout=TIMEOUT_S) - submitted_at
    for stream in streams:
        stream.text()
    engine.shutdown()
    assert joined_after <= 2


@pytest.mark.parametrize("batch_wait_s", [0.0, 1.0])
def test_a_request_arriving_just_after_another_shares_its_first_sweep(
    folder: Path, smollm2_tokenizer, batch_wait_s: float
) -> None:
    engine = make_engine(folder, smollm2_tokenizer, batch_wait_s=batch_wait_s)
    first, second = Collector(), Collector()
    submit(engine, PROMPTS[0], 12, first)
    threading.Event().wait(0.05)  # a moment later, as a burst's next request
    submit(engine, PROMPTS[1], 12, second)
    first.text(), second.text()
    engine.shutdown()
    # Together: one prompt sweep, then eleven decoding ones.
    shared = engine.num_sweeps == 12
    assert shared == (batch_wait_s > 0)


def test_long_prompt_in_chunks_gives_the_same_answer(
    folder: Path, smollm2_tokenizer
) -> None:
    whole = solo_texts(folder, smollm2_tokenizer, [8, 8, 8, 8])
    engine = make_engine(folder, smollm2_tokenizer, max_sweep_tokens=7)
    collector = Collector()
    submit(engine, PROMPTS[3], 8, collector)
    text = collector.text()
    engine.shutdown()
    assert text == whole[3]
    assert engine.num_sweeps == -(-len(PROMPTS[3]) // 7) + 7  # chunks, then decoding


def test_kv_budget_too_small_for_all_preempts_and_finishes_everything(
    folder: Path, smollm2_tokenizer
) -> None:
    lengths = [20, 20, 20, 20]
    expected = solo_texts(folder, smollm2_tokenizer, lengths)
    engine = make_engine(folder, smollm2_tokenizer, kv_tokens=70, max_batch=4)
    collectors = [Collector() for _ in PROMPTS]
    for prompt, count, collector in zip(PROMPTS, lengths, collectors, strict=True):
        submit(engine, prompt, count, collector)
    texts = [collector.text() for collector in collectors]
    engine.shutdown()
    assert texts == expected
    assert engine.num_preempted > 0
