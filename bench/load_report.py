"""What a load run produced: counts, latency percentiles, rates and memory."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.load_client import Outcome, RequestResult
from bench.rss_trace import RssSample, RssTrace

PERCENTILES = (50, 90, 99)
_MB = 1e6
_ERRORS_SHOWN = 5


def percentiles(values: list[float]) -> dict[int, float] | None:
    """p50, p90 and p99 of the values (interpolated), or None for none."""
    if not values:
        return None
    if len(values) == 1:
        return {p: values[0] for p in PERCENTILES}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in PERCENTILES}


@dataclass(frozen=True)
class LoadReport:
    base_url: str
    model: str
    clients: int
    duration_s: float
    max_tokens: int
    wall_s: float  # from the first send to the last answer
    results: list[RequestResult]
    unfinished: int = 0  # still running after the grace period, then dropped
    memory: RssTrace | None = None

    def count(self, outcome: Outcome) -> int:
        return sum(result.outcome is outcome for result in self.results)

    @property
    def served(self) -> list[RequestResult]:
        return [r for r in self.results if r.outcome is Outcome.SERVED]

    @property
    def completion_tokens(self) -> int:
        return sum(result.completion_tokens for result in self.served)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ttft(self) -> dict[int, float] | None:
        return percentiles([r.ttft_s for r in self.served if r.ttft_s is not None])

    @property
    def total(self) -> dict[int, float] | None:
        return percentiles([r.total_s for r in self.served])

    @property
    def error_details(self) -> Counter[str]:
        return Counter(r.detail for r in self.results if r.outcome is Outcome.ERROR)

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "clients": self.clients,
            "duration_s": self.duration_s,
            "max_tokens": self.max_tokens,
            "wall_s": self.wall_s,
            "served": self.count(Outcome.SERVED),
            "errors": self.count(Outcome.ERROR),
            "rejected_503": self.count(Outcome.REJECTED),
            "unfinished": self.unfinished,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": self.tokens_per_s,
            "ttft_s": self.ttft,
            "total_s": self.total,
            "error_details": dict(self.error_details),
            "memory": _memory_dict(self.memory),
        }


def _memory_dict(trace: RssTrace | None) -> dict[str, Any] | None:
    if trace is None:
        return None
    moments = ("start", "after_warmup", "end", "peak", "peak_after_warmup")
    summary: dict[str, Any] = {"pid": trace.pid, "warmup_s": trace.warmup_s}
    for name in moments:
        sample: RssSample | None = getattr(trace, name)
        summary[name] = None if sample is None else vars(sample)
    summary["high_water_bytes"] = trace.high_water_bytes
    summary["samples"] = len(trace.samples)
    return summary


def render(report: LoadReport) -> str:
    lines = [
        f"{report.clients} streaming clients for {report.duration_s:g} s against "
        f"{report.base_url} ({report.model}, max_tokens {report.max_tokens})",
        f"requests: {report.count(Outcome.SERVED)} served, "
        f"{report.count(Outcome.ERROR)} errors, "
        f"{report.count(Outcome.REJECTED)} rejected with 503, "
        f"{report.unfinished} unfinished at the end",
        f"tokens: {report.completion_tokens} in {report.wall_s:.1f} s, "
        f"{report.tokens_per_s:.1f} tokens/s in all",
        _latency_line("time to first token", report.ttft),
        _latency_line("total time", report.total),
    ]
    lines += _error_lines(report.error_details)
    if report.memory is not None:
        lines += _memory_lines(report.memory)
    return "\n".join(lines)


def _latency_line(name: str, cuts: dict[int, float] | None) -> str:
    if cuts is None:
        return f"{name}: no request served"
    shown = ", ".join(f"p{p} {cuts[p]:.2f} s" for p in PERCENTILES)
    return f"{name}: {shown}"


def _error_lines(details: Counter[str]) -> list[str]:
    return [f"  {n} x {detail}" for detail, n in details.most_common(_ERRORS_SHOWN)]


def _memory_lines(trace: RssTrace) -> list[str]:
    start, warm, end = trace.start, trace.after_warmup, trace.end
    if start is None or end is None:
        return [f"server memory (pid {trace.pid}): no sample, the process is gone"]
    peak, peak_warm = trace.peak, trace.peak_after_warmup
    moments = [f"start {_mb(start)}"]
    if warm is not None:
        moments.append(f"after warm-up ({trace.warmup_s:g} s) {_mb(warm)}")
    moments.append(f"end {_mb(end)}")
    lines = [f"server RSS (pid {trace.pid}): " + ", ".join(moments)]
    lines.append(f"  peak {_mb(peak)} at {peak.at_s:.0f} s" if peak else "")
    if warm is not None and peak_warm is not None:
        growth = (end.rss_bytes - warm.rss_bytes) / _MB
        lines.append(f"  after warm-up: peak {_mb(peak_warm)}, end {growth:+.0f} MB")
    if trace.high_water_bytes is not None:
        lines.append(f"  kernel high-water mark {trace.high_water_bytes / _MB:,.0f} MB")
    anon = f"{start.anon_bytes / _MB:,.0f} MB, end {end.anon_bytes / _MB:,.0f} MB"
    lines.append(f"  anonymous memory: start {anon}")
    return [line for line in lines if line]


def _mb(sample: RssSample) -> str:
    return f"{sample.rss_bytes / _MB:,.0f} MB"
