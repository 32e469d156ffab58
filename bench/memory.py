"""A process's memory, read from ``/proc/PID/status`` while it runs.

``VmHWM`` is the kernel's own high-water mark of the resident set; it counts
file pages mapped into the process (a memory-mapped checkpoint) as well as its
own anonymous memory. The anonymous part has no high-water mark, so it is
polled: that is the memory a budget is about, while mapped file pages stay
reclaimable page cache.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_KIB = 1024


@dataclass(frozen=True)
class MemoryPeaks:
    rss_bytes: int | None  # VmHWM
    anon_bytes: int | None  # highest RssAnon seen


def read_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of a process's status file, in bytes; empty once gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) * _KIB
    return fields


class MemoryWatch:
    """Polls one process's memory in a background thread until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._rss: int | None = None
        self._anon: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self) -> MemoryPeaks:
        self.sample()
        return MemoryPeaks(self._rss, self._anon)

    def sample(self) -> None:
        fields = read_status(self.pid)
        with self._lock:
            self._rss = _higher(self._rss, fields.get("VmHWM"))
            self._anon = _higher(self._anon, fields.get("RssAnon"))

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def _higher(current: int | None, seen: int | None) -> int | None:
    if seen is None:
        return current
    return seen if current is None else max(current, seen)
