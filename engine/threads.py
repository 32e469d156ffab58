"""How many CPU threads a sweep runs on, learned from the sweeps themselves.

A sweep of a few tokens is bound by reading the weights, which one thread does
about as fast as several; with several, each of its many small operations ends
at a barrier that waits for the slowest thread, and a thread that the OS gave
to the HTTP side (or to anything else on the machine) stalls the operation for
a time slice. A sweep of many tokens is bound by compute and wants every core.
Where the line lies depends on the machine and on what else runs on it, so the
chooser times both choices for each size of sweep and keeps the faster one,
trying the other again now and then in case the machine's load changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# From this many packed tokens on, a sweep always uses every thread: it is
# compute-bound, and a trial on one thread costs it a third more time (8 and 16
# decoding sequences on a 2-core EPYC: 51 and 63 ms on both cores, 72 and 89
# on one), while every request in the sweep waits for it.
ALL_THREADS_FROM = 8
# One sweep in this many of a size tries the choice that is not the best now.
RETRY_EVERY = 50
# Weight of the newest timing in a choice's running mean.
SMOOTHING = 0.3


class ThreadChooser:
    def __init__(self, most: int, learns: bool = True) -> None:
        self.most = most
        self.learns = learns  # False: always ``most``
        self._seconds: dict[tuple[int, int], float] = {}  # (size, threads) -> mean
        self._sweeps: dict[int, int] = {}  # size -> sweeps chosen for so far

    def choose(self, tokens: int) -> int:
        """Threads for a sweep of ``tokens`` packed tokens."""
        if not self.learns or self.most == 1 or tokens >= ALL_THREADS_FROM:
            return self.most
        size = _size(tokens)
        count = self._sweeps.get(size, 0)
        self._sweeps[size] = count + 1
        options = (1, self.most)
        unmeasured = [n for n in options if (size, n) not in self._seconds]
        if unmeasured:
            return unmeasured[0]
        best = min(options, key=lambda n: self._seconds[size, n])
        if count % RETRY_EVERY == 0:
            other = options[0] if best == options[1] else options[1]
            # Its mean is many sweeps old: the new timing replaces it.
            del self._seconds[size, other]
            return other
        return best

    def record(self, tokens: int, threads: int, seconds: float) -> None:
        """How long a sweep of ``tokens`` took on ``threads`` threads."""
        if tokens >= ALL_THREADS_FROM:
            return
        key = (_size(tokens), threads)
        mean = self._seconds.get(key)
        self._seconds[key] = (
            seconds if mean is None else mean + SMOOTHING * (seconds - mean)
        )


def _size(tokens: int) -> int:
    # Sizes in powers of two: 1, 2-3, 4-7, ... tokens share their timings.
    return tokens.bit_length()


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` torch threads, then restore the number."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
