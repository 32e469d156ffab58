"""Prometheus metrics of one app: requests, latencies, tokens, sweeps, memory.

Each app has its own registry, so several apps (tests) can live in a process.
Request figures are taken when a request's response ends; sweep figures come
from the engine's observer hook, on the worker thread, after every sweep.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import Engine
from engine.stats import SweepStats
from server.access_log import RequestRecord, StatusWatch

_PREFIX = "layerstream_"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BYTES = tuple(float(10**power) for power in range(5, 12))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests()
        self._latencies()
        self._engine()

    def _requests(self) -> None:
        self.running = self._gauge("requests_running", "requests in the batch")
        self.waiting = self._gauge("requests_waiting", "requests in the queue")
        self.rejected = Counter(
            _PREFIX + "requests_rejected",
            "requests refused with 503 (queue full, loading, shutting down)",
            ["code"],
            registry=self.registry,
        )
        self.cancelled = self._counter(
            "requests_cancelled", "requests dropped because the client left"
        )
        self.timed_out = self._counter(
            "requests_timed_out", "requests ended by request_timeout"
        )
        self.prompt_tokens = self._counter("prompt_tokens", "prompt tokens taken")
        self.generated_tokens = self._counter("generation_tokens", "tokens generated")

    def _latencies(self) -> None:
        self.time_to_first_token = self._histogram(
            "time_to_first_token_seconds", "arrival to first token"
        )
        self.inter_token = self._histogram(
            "inter_token_latency_seconds", "time between generated tokens"
        )
        self.request_duration = self._histogram(
            "request_duration_seconds", "arrival to the end of the response"
        )
        self.queue_time = self._histogram(
            "queue_time_seconds", "arrival to joining the batch"
        )

    def _engine(self) -> None:
        self.sweep_duration = self._histogram(
            "sweep_duration_seconds", "one pass over the layers"
        )
        self.sweep_wait = self._histogram(
            "sweep_weight_wait_seconds", "time a sweep waited for layer weights"
        )
        self.sweep_bytes = Histogram(
            _PREFIX + "sweep_streamed_bytes",
            "bytes of weights streamed in one sweep",
            buckets=_BYTES,
            registry=self.registry,
        )
        self.resident_bytes = self._gauge(
            "resident_bytes", "bytes of weights kept in memory"
        )
        self.kv_used = self._gauge("kv_cache_used_tokens", "tokens in the KV caches")
        self.kv_budget = self._gauge("kv_cache_budget_tokens", "KV-cache capacity")

    def watch(self, engine: Engine) -> None:
        """Reads the engine's counts at each scrape and hears each sweep."""
        self.running.set_function(lambda: engine.num_running)
        self.waiting.set_function(lambda: engine.num_waiting)
        self.kv_used.set_function(lambda: engine.kv_tokens_used)
        self.kv_budget.set_function(lambda: engine.kv_tokens_budget)
        resident = engine.plan.get("resident_bytes")
        self.resident_bytes.set(resident if isinstance(resident, int) else 0)
        engine.sweep_observers.append(self.observe_sweep)

    def observe_sweep(self, sweep: SweepStats) -> None:
        self.sweep_duration.observe(sweep.total_s)
        self.sweep_wait.observe(sweep.wait_s)
        self.sweep_bytes.observe(sweep.bytes_streamed)

    def observe_response(
        self, status: int, code: str | None, record: RequestRecord | None
    ) -> None:
        if status == 503 and code is not None:  # probes say 503 without a code
            self.rejected.labels(code=code or "unknown").inc()
        if record is not None:
            self._observe_request(record)

    def _observe_request(self, record: RequestRecord) -> None:
        if record.outcome == "cancelled":
            self.cancelled.inc()
        elif record.outcome == "timeout":
            self.timed_out.inc()
        self.prompt_tokens.inc(record.prompt_tokens)
        self.generated_tokens.inc(record.completion_tokens)
        self.request_duration.observe(record.elapsed_s)
        if record.ttft_s is not None:
            self.time_to_first_token.observe(record.ttft_s)
        if record.queue_s is not None:
            self.queue_time.observe(record.queue_s)
        for gap in record.token_gaps:
            self.inter_token.observe(gap)

    def _gauge(self, name: str, help_text: str) -> Gauge:
        return Gauge(_PREFIX + name, help_text, registry=self.registry)

    def _counter(self, name: str, help_text: str) -> Counter:
        return Counter(_PREFIX + name, help_text, registry=self.registry)

    def _histogram(self, name: str, help_text: str) -> Histogram:
        return Histogram(
            _PREFIX + name, help_text, buckets=_SECONDS, registry=self.registry
        )


class RequestMetrics:
    """Hands each finished response to the app's ``Metrics``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            error = state.get("error")
            code = error.code if error else None
            self.metrics.observe_response(watch.status, code, state.get("record"))
