"""The server's resident memory over a load run, sampled from ``/proc``.

Three moments tell whether memory is flat: the start, the end of the warm-up
(once every buffer and cache has been allocated once) and the end. The peak is
the highest sample, and ``VmHWM`` the kernel's own high-water mark.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.memory import read_status


@dataclass(frozen=True)
class RssSample:
    at_s: float  # since the trace started
    rss_bytes: int
    anon_bytes: int


@dataclass
class RssTrace:
    pid: int
    warmup_s: float
    samples: list[RssSample] = field(default_factory=list)
    high_water_bytes: int | None = None  # VmHWM at the last sample

    def sample(self, started: float) -> bool:
        """Adds one sample; False once the process is gone."""
        status = read_status(self.pid)
        if "VmRSS" not in status:
            return False
        at = time.perf_counter() - started
        rss, anon = status["VmRSS"], status.get("RssAnon", 0)
        self.samples.append(RssSample(at, rss, anon))
        self.high_water_bytes = status.get("VmHWM", self.high_water_bytes)
        return True

    async def follow(self, interval_s: float, stop: asyncio.Event) -> None:
        started = time.perf_counter()
        while self.sample(started):
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                continue
            self.sample(started)  # the end of the run
            return

    @property
    def start(self) -> RssSample | None:
        return self.samples[0] if self.samples else None

    @property
    def after_warmup(self) -> RssSample | None:
        later = [s for s in self.samples if s.at_s >= self.warmup_s]
        return later[0] if later else None

    @property
    def end(self) -> RssSample | None:
        return self.samples[-1] if self.samples else None

    @property
    def peak(self) -> RssSample | None:
        return max(self.samples, key=lambda s: s.rss_bytes, default=None)

    @property
    def peak_after_warmup(self) -> RssSample | None:
        later = [s for s in self.samples if s.at_s >= self.warmup_s]
        return max(later, key=lambda s: s.rss_bytes, default=None)
