"""The load script: its request outcomes on a scripted app, then a live server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bench.load import LoadOptions, main, run_load
from bench.load_client import Outcome, RequestResult, stream_chat
from bench.load_report import percentiles
from bench.rss_trace import RssTrace
from tests.live_server import LiveServer

BASE_URL = "http://scripted"
STALL_S = 30.0  # far longer than any run below lasts
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def _sse(*chunks: Any, done: bool = True) -> str:
    events = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks]
    return "".join(events) + ("data: [DONE]\n\n" if done else "")


def _delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}], "usage": None}


ANSWERS = {
    "served": _sse(_delta("Hel"), _delta("lo"), {"choices": [], "usage": USAGE}),
    "cut": _sse(_delta("Hel"), done=False),
    "error chunk": _sse(_delta("Hel"), {"error": {"message": "engine failed"}}),
}


def _scripted_app(answer: str) -> FastAPI:
    """A server that always answers ``answer``: a key of ANSWERS, or a status."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        if answer == "never":
            await asyncio.sleep(STALL_S)
        if answer == "503":
            headers = {"Retry-After": "0"}
            return JSONResponse({"error": {}}, status_code=503, headers=headers)
        if answer == "500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        return StreamingResponse(
            iter([ANSWERS[answer]]), media_type="text/event-stream"
        )

    return app


async def _one(answer: str) -> RequestResult:
    transport = httpx.ASGITransport(app=_scripted_app(answer))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        return await stream_chat(client, {"model": "scripted"}, load_start=0.0)


def _result(answer: str) -> RequestResult:
    return asyncio.run(_one(answer))


def test_a_finished_stream_is_served_with_the_usage_count() -> None:
    result = _result("served")

    assert result.outcome is Outcome.SERVED
    assert result.completion_tokens == USAGE["completion_tokens"]
    assert result.ttft_s is not None and result.ttft_s <= result.total_s


def test_a_503_is_a_rejection_not_an_error() -> None:
    result = _result("503")

    assert result.outcome is Outcome.REJECTED
    assert result.retry_after_s == 0


@pytest.mark.parametrize("answer", ["500", "cut", "error chunk"])
def test_other_failures_are_errors(answer: str) -> None:
    assert _result(answer).outcome is Outcome.ERROR


def test_a_run_counts_every_request_of_every_client() -> None:
    options = LoadOptions(BASE_URL, clients=3, duration_s=0.3, max_tokens=2)
    transport = httpx.ASGITransport(app=_scripted_app("served"))

    report = run_load(options, transport)

    assert report.model == "scripted"
    assert len(report.results) >= options.clients
    assert report.completion_tokens == 2 * len(report.results)


def test_a_run_drops_what_outlives_its_grace() -> None:
    options = LoadOptions(BASE_URL, 2, duration_s=0.2, max_tokens=2, grace_s=0.2)
    transport = httpx.ASGITransport(app=_scripted_app("never"))
    started = time.perf_counter()

    report = run_load(options, transport)

    assert report.unfinished == options.clients
    assert time.perf_counter() - started < STALL_S / 2


def test_percentiles_of_one_value_are_that_value() -> None:
    assert percentiles([2.0]) == {50: 2.0, 90: 2.0, 99: 2.0}


def test_percentiles_rise_with_the_rank() -> None:
    cuts = percentiles([float(n) for n in range(1, 101)])

    assert cuts is not None
    assert cuts[50] < cuts[90] < cuts[99] <= 100


async def _trace_self(duration_s: float) -> RssTrace:
    trace, stop = RssTrace(os.getpid(), warmup_s=0.0), asyncio.Event()
    following = asyncio.ensure_future(trace.follow(0.05, stop))
    await asyncio.sleep(duration_s)
    stop.set()
    await following
    return trace


def test_memory_trace_samples_until_stopped() -> None:
    trace = asyncio.run(_trace_self(0.3))

    assert len(trace.samples) >= 3
    assert trace.start is not None and trace.start.rss_bytes > 0
    assert trace.after_warmup is trace.start


@dataclass(frozen=True)
class LiveRun:
    code: int
    printed: str
    figures: dict[str, Any]


@pytest.fixture(scope="module")
def live_run(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> LiveRun:
    """A short run of the command line against the session's live server."""
    figures = tmp_path_factory.mktemp("load") / "load.json"
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(
            [
                *("--url", live_server.base_url, "--clients", "3"),
                *("--duration", "3", "--max-tokens", "8", "--warmup", "1"),
                *("--server-pid", str(live_server.pid), "--json", str(figures)),
            ]
        )
    return LiveRun(code, printed.getvalue(), json.loads(figures.read_text()))


def test_live_run_serves_without_errors(live_run: LiveRun) -> None:
    assert live_run.code == 0
    assert live_run.figures["errors"] == 0
    assert live_run.figures["served"] >= 3


def test_live_run_measures_rates_and_latencies(live_run: LiveRun) -> None:
    figures = live_run.figures

    assert figures["tokens_per_s"] > 0
    assert figures["ttft_s"]["50"] <= figures["total_s"]["50"]


def test_live_run_follows_the_server_memory(live_run: LiveRun) -> None:
    memory = live_run.figures["memory"]

    assert memory["samples"] >= 2
    assert memory["peak"]["rss_bytes"] >= memory["start"]["rss_bytes"] > 0


def test_live_run_prints_each_figure(live_run: LiveRun) -> None:
    for figure in ("served", "rejected with 503", "tokens/s in all", "p99", "RSS"):
        assert figure in live_run.printed


def test_unreachable_server_fails_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--url", "http://127.0.0.1:9", "--duration", "0.1"])

    assert code == 1
    assert "cannot reach" in capsys.readouterr().err
