"""``python -m bench.load``: many streaming clients against a running server.

Each client sends streamed chat completions one after another until the time
is up; requests still running then get a grace period to finish, and those
that do not are dropped and counted as unfinished (the run stops by itself).
The wall time runs from the first send to the last answer. A client that gets
a 503 waits what the server's ``Retry-After`` asks before trying again. With
``--server-pid`` the server's resident memory is sampled all along, to show
whether it stays flat.

    python -m bench.load --url http://127.0.0.1:8000 --clients 32 --duration 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.load_client import Outcome, RequestResult, stream_chat
from bench.load_report import LoadReport, render
from bench.rss_trace import RssTrace

logger = logging.getLogger(__name__)

EXIT_ERRORS = 1
MEMORY_INTERVAL_S = 0.5
_ERROR_PAUSE_S = 0.5  # after a failed request, so a dead server is not hammered
# Prompts of different lengths, taken in turn, so sequences join and leave the
# batch at different times, as with real users.
PROMPTS = (
    "Write a short story about a lighthouse keeper and the sea.",
    "What is the capital of France?",
    "Explain in a few sentences why the sky is blue.",
    "List five fruits and say one thing about each.",
    "Write a haiku about autumn leaves.",
    "Describe how a bicycle works to a ten-year-old.",
)


@dataclass(frozen=True)
class LoadOptions:
    base_url: str
    clients: int
    duration_s: float
    max_tokens: int
    temperature: float = 0.7
    model: str | None = None  # None: the first model the server lists
    api_key: str | None = None
    server_pid: int | None = None
    warmup_s: float = 0.0  # memory before this is the warm-up's
    grace_s: float = 60.0  # for requests still running when the time is up


def run_load(
    options: LoadOptions, transport: httpx.AsyncBaseTransport | None = None
) -> LoadReport:
    return asyncio.run(_load(options, transport))


async def _load(
    options: LoadOptions, transport: httpx.AsyncBaseTransport | None
) -> LoadReport:
    trace = _trace(options)
    stop_trace = asyncio.Event()
    async with _client(options, transport) as client:
        model = options.model or await _first_model(client)
        following = asyncio.ensure_future(_follow(trace, stop_trace))
        started = time.perf_counter()
        deadline = started + options.duration_s
        results: list[RequestResult] = []
        clients = [
            _one_client(client, model, options, index, started, deadline, results)
            for index in range(options.clients)
        ]
        unfinished = await _run_bounded(clients, options.duration_s + options.grace_s)
        wall = time.perf_counter() - started
        stop_trace.set()
        await following
    return LoadReport(
        options.base_url,
        model,
        options.clients,
        options.duration_s,
        options.max_tokens,
        wall,
        results,
        unfinished,
        trace,
    )


async def _run_bounded(clients: list[Coroutine[Any, Any, None]], limit_s: float) -> int:
    """Runs the clients for at most ``limit_s``; returns how many were cut short."""
    tasks = [asyncio.ensure_future(client) for client in clients]
    _, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        # Closing the stream tells the server to drop the request.
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


def _trace(options: LoadOptions) -> RssTrace | None:
    if options.server_pid is None:
        return None
    return RssTrace(options.server_pid, options.warmup_s)


async def _follow(trace: RssTrace | None, stop: asyncio.Event) -> None:
    if trace is not None:
        await trace.follow(MEMORY_INTERVAL_S, stop)


def _client(
    options: LoadOptions, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    return httpx.AsyncClient(
        base_url=options.base_url,
        headers=headers,
        transport=transport,
        limits=httpx.Limits(max_connections=options.clients + 1),
        # No read timeout: a queued request may wait long for its first token.
        timeout=httpx.Timeout(10.0, read=None),
    )


async def _first_model(client: httpx.AsyncClient) -> str:
    reply = await client.get("/v1/models")
    reply.raise_for_status()
    return reply.json()["data"][0]["id"]


async def _one_client(
    client: httpx.AsyncClient,
    model: str,
    options: LoadOptions,
    index: int,
    started: float,
    deadline: float,
    results: list[RequestResult],
) -> None:
    sent = 0
    while time.perf_counter() < deadline:
        prompt = PROMPTS[(index + sent * options.clients) % len(PROMPTS)]
        result = await stream_chat(client, _body(model, prompt, options), started)
        results.append(result)
        sent += 1
        await asyncio.sleep(_pause(result, deadline))


def _pause(result: RequestResult, deadline: float) -> float:
    if result.outcome is Outcome.REJECTED:
        wait = result.retry_after_s
    elif result.outcome is Outcome.ERROR:
        wait = _ERROR_PAUSE_S
    else:
        return 0.0
    return max(0.0, min(wait, deadline - time.perf_counter()))


def _body(model: str, prompt: str, options: LoadOptions) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="Streaming clients against a running layerstream server.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server URL")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=64, help="per request")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--model", help="model id (default: the first listed)")
    parser.add_argument("--api-key", help="sent as a Bearer token")
    parser.add_argument("--server-pid", type=int, help="sample this process's RSS")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up (default: a tenth of the run)"
    )
    parser.add_argument(
        "--grace", type=float, default=60.0, help="seconds to finish after the time"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def options_from(args: argparse.Namespace) -> LoadOptions:
    warmup = args.duration / 10 if args.warmup is None else args.warmup
    return LoadOptions(
        base_url=args.url.rstrip("/"),
        clients=args.clients,
        duration_s=args.duration,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        model=args.model,
        api_key=args.api_key,
        server_pid=args.server_pid,
        warmup_s=warmup,
        grace_s=args.grace,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        report = run_load(options_from(args))
    except httpx.HTTPError as exc:
        print(f"bench.load: error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return EXIT_ERRORS if report.count(Outcome.ERROR) else 0


if __name__ == "__main__":
    raise SystemExit(main())
