"""Admission, cancellation and deadlines through a live server and the real engine.

Compat cases 8 (a burst above the queue) and 9 (a client that leaves), and the
request deadline; each effect is read back through ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine import Engine
from server.settings import Settings
from tests.server.tiny_server import (
    MODEL,
    live_server,
    metric,
    open_tiny_engine,
    save_tiny_model,
    slow_down,
    wait_for_metric,
)

SWEEP_S = 0.02
MAX_QUEUE = 2
LONG = 3000  # tokens: far more than any test waits for
CHAT = "/v1/chat/completions"


def _body(max_tokens: int, stream: bool = False, content: str = "Hi") -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), smollm2_dir)


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Engine]:
    # One place in the batch: a second request waits, a fourth is refused.
    engine = open_tiny_engine(
        tiny_model, max_batch=1, max_queue=MAX_QUEUE, max_sweep_tokens=16
    )
    slow_down(engine, SWEEP_S)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def base_url(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(served_model_name=MODEL, home=tmp_path_factory.mktemp("home"))
    with live_server(settings, engine) as url:
        yield url


@pytest.fixture(autouse=True)
def _idle(base_url: str) -> Iterator[None]:
    yield
    # Each test leaves the engine as it found it, or the next would wait.
    assert wait_for_metric(base_url, "layerstream_requests_running", 0) == 0
    assert wait_for_metric(base_url, "layerstream_requests_waiting", 0) == 0


def _first_content(lines: Iterator[str]) -> None:
    """Reads up to the first generated text. Keep ``lines`` referenced: httpx
    closes the connection when the iterator is collected."""
    for line in lines:
        if line.startswith("data: ") and '"content":"' in line:
            if '"content":""' not in line:
                return


async def _burst(base_url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        calls = [client.post(CHAT, json=_body(10)) for _ in range(count)]
        return await asyncio.gather(*calls)


def test_burst_above_the_queue_refuses_the_extra_at_once(base_url: str) -> None:
    rejected = "layerstream_requests_rejected_total"
    before = metric(base_url, rejected, 'code="queue_full"')

    responses = asyncio.run(_burst(base_url, 6))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * (1 + MAX_QUEUE) + [503] * (5 - MAX_QUEUE)
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"].isdigit()
            assert response.json()["error"]["code"] == "queue_full"
        else:
            assert response.json()["choices"][0]["finish_reason"] == "length"
    after = metric(base_url, rejected, 'code="queue_full"')
    assert after - before == 5 - MAX_QUEUE


def test_client_leaving_mid_stream_frees_its_slot(base_url: str) -> None:
    cancelled = metric(base_url, "layerstream_requests_cancelled_total")

    with httpx.stream("POST", f"{base_url}{CHAT}", json=_body(LONG, True)) as reply:
        lines = reply.iter_lines()
        _first_content(lines)
        assert metric(base_url, "layerstream_requests_running") == 1
        assert metric(base_url, "layerstream_kv_cache_used_tokens") > 0

    assert wait_for_metric(base_url, "layerstream_requests_running", 0) == 0
    assert metric(base_url, "layerstream_kv_cache_used_tokens") == 0
    assert wait_for_metric(
        base_url, "layerstream_requests_cancelled_total", cancelled + 1
    ) == (cancelled + 1)


def test_client_leaving_during_its_prompt_frees_its_slot(base_url: str) -> None:
    # 16 tokens a sweep: this prompt takes over a hundred sweeps to read.
    body = _body(LONG, True, content="word " * 2000)
    generated = metric(base_url, "layerstream_generation_tokens_total")

    with httpx.stream("POST", f"{base_url}{CHAT}", json=body) as reply:
        lines = reply.iter_lines()
        next(lines)  # the role chunk, sent before any token
        assert wait_for_metric(base_url, "layerstream_requests_running", 1) == 1
        assert metric(base_url, "layerstream_kv_cache_used_tokens") > 0

    assert wait_for_metric(base_url, "layerstream_requests_running", 0) == 0
    assert metric(base_url, "layerstream_kv_cache_used_tokens") == 0
    assert metric(base_url, "layerstream_generation_tokens_total") == generated


def test_client_leaving_a_whole_completion_frees_its_slot(base_url: str) -> None:
    cancelled = metric(base_url, "layerstream_requests_cancelled_total")

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}{CHAT}", json=_body(LONG), timeout=0.5)

    assert wait_for_metric(base_url, "layerstream_requests_running", 0) == 0
    assert metric(base_url, "layerstream_kv_cache_used_tokens") == 0
    assert wait_for_metric(
        base_url, "layerstream_requests_cancelled_total", cancelled + 1
    ) == (cancelled + 1)


def test_client_leaving_the_queue_frees_its_place(base_url: str) -> None:
    with httpx.stream("POST", f"{base_url}{CHAT}", json=_body(LONG, True)) as held:
        lines = held.iter_lines()
        _first_content(lines)  # the one place in the batch is taken
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base_url}{CHAT}", json=_body(4), timeout=0.5)

        assert wait_for_metric(base_url, "layerstream_requests_waiting", 0) == 0
        # The place is free for newcomers while the batch is still busy.
        assert metric(base_url, "layerstream_requests_running") == 1


def test_finished_request_is_measured(base_url: str) -> None:
    count = "layerstream_time_to_first_token_seconds_count"
    before = metric(base_url, count)
    generated = metric(base_url, "layerstream_generation_tokens_total")

    response = httpx.post(f"{base_url}{CHAT}", json=_body(5), timeout=30)

    usage = response.json()["usage"]
    assert metric(base_url, count) == before + 1
    assert metric(base_url, "layerstream_generation_tokens_total") == generated + 5
    assert metric(base_url, "layerstream_prompt_tokens_total") >= usage["prompt_tokens"]
    assert metric(base_url, "layerstream_sweep_duration_seconds_count") > 0
    assert metric(base_url, "layerstream_queue_time_seconds_count") > 0
    assert metric(base_url, "layerstream_inter_token_latency_seconds_count") >= 4


DEADLINE_S = 0.5


@pytest.fixture(scope="module")
def late_url(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second server whose engine ends requests after ``DEADLINE_S``."""
    engine = open_tiny_engine(tiny_model, max_batch=1, request_timeout_s=DEADLINE_S)
    slow_down(engine, SWEEP_S)
    settings = Settings(served_model_name=MODEL, home=tmp_path_factory.mktemp("home"))
    try:
        with live_server(settings, engine) as url:
            yield url
    finally:
        engine.shutdown()


def test_late_whole_completion_is_a_504(late_url: str) -> None:
    started = time.monotonic()
    response = httpx.post(f"{late_url}{CHAT}", json=_body(LONG), timeout=30)

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 5
    assert wait_for_metric(late_url, "layerstream_requests_running", 0) == 0


def test_late_stream_ends_with_an_error_event(late_url: str) -> None:
    with httpx.stream("POST", f"{late_url}{CHAT}", json=_body(LONG, True)) as reply:
        data = [line for line in reply.iter_lines() if line.startswith("data: ")]

    error = json.loads(data[-1].removeprefix("data: "))["error"]
    assert error["code"] == "request_timeout"
    assert wait_for_metric(late_url, "layerstream_requests_running", 0) == 0
    assert metric(late_url, "layerstream_requests_timed_out_total") >= 1


def test_late_request_drops_every_choice(late_url: str) -> None:
    # One place in the batch: one choice runs while the other waits in the queue.
    body = {**_body(LONG), "n": 2}

    response = httpx.post(f"{late_url}{CHAT}", json=body, timeout=30)

    assert response.status_code == 504
    assert wait_for_metric(late_url, "layerstream_requests_running", 0) == 0
    assert wait_for_metric(late_url, "layerstream_requests_waiting", 0) == 0
    assert metric(late_url, "layerstream_kv_cache_used_tokens") == 0
