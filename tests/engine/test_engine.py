"""The worker: admission, finishing, cancelling, and surviving failures."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.checkpoint import Checkpoint
from engine.engine import Engine
from engine.errors import InvalidRequestError, QueueFullError, RequestTimeoutError
from engine.options import EngineOptions
from engine.request import (
    ErrorEvent,
    Event,
    FinishEvent,
    GenerationRequest,
    RequestHandle,
    SamplingParams,
    TokenEvent,
)
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from tests.engine.tiny_models import CONFIGS, build_model, save_model

PROMPT = [5, 17, 42, 99, 3]
TIMEOUT_S = 30


def make_engine(folder: Path, tokenizer, **limits: int) -> Engine:
    config = CONFIGS["llama"]
    options = EngineOptions(torch.device("cpu"), torch.float32, **limits)
    runner = ModelRunner(
        build_skeleton(config),
        Checkpoint(folder),
        options.device,
        options.dtype,
        options.prefetch_depth,
    )
    return Engine("tiny", tokenizer, runner, options, frozenset())


@pytest.fixture
def engine(tmp_path: Path, smollm2_tokenizer) -> Iterator[Engine]:
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path)
    engine = make_engine(folder, smollm2_tokenizer, max_batch=4, max_queue=4)
    yield engine
    engine.shutdown()


def submit(engine: Engine, max_tokens: int = 8, sink=None) -> queue.Queue[Event]:
    events: queue.Queue[Event] = queue.Queue()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    engine.submit(GenerationRequest("r", PROMPT, params), sink or events.put)
    return events


def final_event(events: queue.Queue[Event]) -> Event:
    while isinstance(event := events.get(timeout=TIMEOUT_S), TokenEvent):
        pass
    return event


def test_cap_ends_with_length(engine: Engine) -> None:
    event = final_event(submit(engine, max_tokens=5))
    assert event == FinishEvent("length", len(PROMPT), 5)


def test_requests_sharing_sweeps_get_their_solo_answer(engine: Engine) -> None:
    solo = final_event(submit(engine, max_tokens=12))
    together = [submit(engine, max_tokens=12) for _ in range(3)]
    assert [final_event(events) for events in together] == [solo] * 3


@contextlib.contextmanager
def one_running(folder: Path, tokenizer, **limits: int) -> Iterator[Engine]:
    """An engine whose worker is held inside its first request's sweep."""
    engine = make_engine(folder, tokenizer, **limits)
    release = threading.Event()
    started = threading.Event()

    def blocking_sink(event: Event) -> None:
        started.set()
        release.wait(TIMEOUT_S)

    try:
        submit(engine, sink=blocking_sink)
        assert started.wait(TIMEOUT_S)
        yield engine
    finally:
        release.set()
        engine.shutdown()


def test_full_queue_refuses_at_once(tmp_path: Path, smollm2_tokenizer) -> None:
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path)
    with one_running(folder, smollm2_tokenizer, max_batch=1, max_queue=1) as engine:
        submit(engine)
        with pytest.raises(QueueFullError):
            submit(engine)


def test_a_burst_fills_the_free_places_of_the_batch_and_then_the_queue(
    tmp_path: Path, smollm2_tokenizer
) -> None:
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path)
    with one_running(folder, smollm2_tokenizer, max_batch=3, max_queue=1) as engine:
        for _ in range(3):  # two free places in the batch, one in the queue
            submit(engine)
        with pytest.raises(QueueFullError):
            submit(engine)


def test_cancelled_request_leaves_the_batch(engine: Engine) -> None:
    events = queue.Queue()
    params = SamplingParams(max_tokens=10_000, temperature=0.0)
    handle = engine.submit(GenerationRequest("c", PROMPT, params), events.put)
    events.get(timeout=TIMEOUT_S)
    handle.cancel()
    final_event(submit(engine, max_tokens=2))  # at least one sweep boundary passed
    assert engine.num_running == 0


def test_failed_sweep_fails_its_requests_and_the_worker_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sweep = engine.runner.sweep
    calls = iter([RuntimeError("device lost")])

    def flaky_sweep(inputs):
        error = next(calls, None)
        if error is not None:
            raise error
        return real_sweep(inputs)

    monkeypatch.setattr(engine.runner, "sweep", flaky_sweep)
    failed = final_event(submit(engine))
    assert isinstance(failed, ErrorEvent) and "device lost" in str(failed.error)
    assert isinstance(final_event(submit(engine)), FinishEvent)


def collect(events: queue.Queue[Event]) -> tuple[str, Event]:
    pieces = []
    while isinstance(event := events.get(timeout=TIMEOUT_S), TokenEvent):
        pieces.append(event.text)
    return "".join(pieces), event


def test_failed_layer_read_leaves_later_answers_intact(
    engine: Engine, tmp_path: Path, smollm2_tokenizer
) -> None:
    expected = collect(submit(engine))
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path / "flaky")
    checkpoint = Checkpoint(folder)
    map_layer, failures = checkpoint.map_layer, []

    def flaky_map(index: int):
        if failures and index == failures[0]:
            failures.pop()
            raise OSError("disk hiccup")
        return map_layer(index)

    # Float32 layers on the CPU are used in place, so this is their read.
    checkpoint.map_layer = flaky_map
    options = EngineOptions(torch.device("cpu"), torch.float32)
    runner = ModelRunner(
        build_skeleton(CONFIGS["llama"]),
        checkpoint,
        options.device,
        options.dtype,
        options.prefetch_depth,
    )
    failures.append(1)  # the start-up mapping went well; a sweep's read fails
    flaky = Engine("tiny", smollm2_tokenizer, runner, options, frozenset())
    try:
        assert isinstance(collect(submit(flaky))[1], ErrorEvent)
        assert collect(submit(flaky)) == expected
    finally:
        flaky.shutdown()


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "param"),
    [
        ([], 4, "messages"),
        ([1] * 256, 4, "messages"),
        ([10_000], 4, "prompt"),
        ([1, 2], 0, "max_tokens"),
    ],
)
def test_bad_request_is_refused_and_others_go_on(
    engine: Engine, prompt: list[int], max_tokens: int, param: str
) -> None:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    with pytest.raises(InvalidRequestError) as caught:
        engine.submit(GenerationRequest("bad", prompt, params), lambda event: None)
    assert caught.value.param == param
    assert isinstance(final_event(submit(engine)), FinishEvent)


def test_failing_request_does_not_stop_the_others(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.engine as worker

    real_sample = worker.sample_next

    def sample_or_fail(logits, params, generator):
        if params.max_tokens == 7:
            raise RuntimeError("bad sampling state")
        return real_sample(logits, params, generator)

    monkeypatch.setattr(worker, "sample_next", sample_or_fail)
    doomed, healthy = submit(engine, max_tokens=7), submit(engine, max_tokens=6)
    assert isinstance(final_event(doomed), ErrorEvent)
    assert final_event(healthy) == FinishEvent("length", len(PROMPT), 6)
    assert engine.is_alive


def _hold_the_batch(engine: Engine) -> tuple[threading.Event, RequestHandle]:
    """A request that keeps the batch's one place until released."""
    release, started = threading.Event(), threading.Event()

    def blocking_sink(event: Event) -> None:
        started.set()
        release.wait(TIMEOUT_S)

    params = SamplingParams(max_tokens=10_000, temperature=0.0)
    handle = engine.submit(GenerationRequest("held", PROMPT, params), blocking_sink)
    assert started.wait(TIMEOUT_S)
    return release, handle


def test_leaving_the_queue_frees_its_place_at_once(
    tmp_path: Path, smollm2_tokenizer
) -> None:
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path)
    engine = make_engine(folder, smollm2_tokenizer, max_batch=1, max_queue=1)
    release, held = _hold_the_batch(engine)
    try:
        params = SamplingParams(max_tokens=2, temperature=0.0)
        queued = engine.submit(GenerationRequest("q", PROMPT, params), print)
        assert engine.num_waiting == 1
        queued.cancel()
        assert engine.num_waiting == 0
        submit(engine)  # the place is free although the worker has not moved
    finally:
        held.cancel()
        release.set()
        engine.shutdown()


def test_clients_leaving_the_queue_one_after_another_leave_it_empty(
    tmp_path: Path, smollm2_tokenizer
) -> None:
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path)
    engine = make_engine(folder, smollm2_tokenizer, max_batch=1, max_queue=1)
    # The batch stays full while the worker keeps sweeping.
    held = submit(engine, max_tokens=10_000, sink=lambda event: time.sleep(0.02))
    try:
        _wait_for_sweeps(engine, 1)
        for _ in range(5):  # more leavers than the queue has room for
            params = SamplingParams(max_tokens=2, temperature=0.0)
            engine.submit(GenerationRequest("q", PROMPT, params), print).cancel()
            _wait_for_sweeps(engine, 2)
        assert engine.num_waiting == 0
        submit(engine)  # not refused: the leavers hold no place
    finally:
        engine.shutdown()
    del held


def _wait_for_sweeps(engine: Engine, count: int) -> None:
    goal = engine.num_sweeps + count
    deadline = time.monotonic() + TIMEOUT_S
    while engine.num_sweeps < goal:
        assert time.monotonic() < deadline, "the worker stopped sweeping"
        time.sleep(0.005)


def test_request_past_its_deadline_gets_a_timeout_error(
    tmp_path: Path, smollm2_tokenizer
) -> None:
    folder = save_model(build_model(CONFIGS["llama"]), tmp_path)
    engine = make_engine(folder, smollm2_tokenizer, max_batch=1)
    engine.options = dataclasses.replace(engine.options, request_timeout_s=1.0)
    try:
        running: queue.Queue[Event] = queue.Queue()

        def slow_sink(event: Event) -> None:
            time.sleep(0.05)  # the whole context would take seconds
            running.put(event)

        submit(engine, max_tokens=10_000, sink=slow_sink)
        queued = submit(engine, max_tokens=4)
        for events in (running, queued):
            event = final_event(events)
            assert isinstance(event, ErrorEvent)
            assert isinstance(event.error, RequestTimeoutError)
        final_event(submit(engine, max_tokens=1))  # a sweep boundary has passed
        assert engine.num_running == 0 and engine.num_waiting == 0
    finally:
        engine.shutdown()
