"""Who runs in the next sweep, and how many of their tokens.

Between sweeps: waiting requests join while the batch has room (``max_batch``
sequences and the KV-cache budget); in the sweep, every decoding sequence gets
one token and prompts share the rest of the sweep's token budget in arrival
order, so a long prompt is processed in chunks over several sweeps instead of
stalling the others. When the KV cache would overflow, the latest arrivals
give their cache back and wait at the head of the line to be computed again.
An embedding is a prompt and nothing more: it leaves once its last chunk ran.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import QueueFullError
from engine.kv_cache import BlockKey, SequenceCache
from engine.request import RequestState
from engine.sequence import Sequence

_IDLE_POLL_S = 0.1


@dataclass(frozen=True)
class Slot:
    sequence: Sequence
    count: int  # pending tokens fed in this sweep

    @property
    def token_ids(self) -> list[int]:
        return self.sequence.pending_ids[: self.count]

    @property
    def wants_logits(self) -> bool:
        # A prompt's last chunk predicts the first token; an embedding predicts none.
        is_last = self.count == len(self.sequence.pending_ids)
        return is_last and not self.sequence.is_embedding

    @property
    def wants_hidden(self) -> bool:
        """An embedding averages the final hidden state of every prompt token."""
        return self.sequence.is_embedding


class Scheduler:
    def __init__(
        self,
        max_batch: int,
        max_queue: int,
        max_sweep_tokens: int,
        kv_tokens: int,
        new_cache: Callable[[], SequenceCache],
        batch_wait_s: float = 0.0,
    ) -> None:
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.max_sweep_tokens = max_sweep_tokens
        self.kv_tokens = kv_tokens  # KV-cache budget, in tokens of all layers
        self.running: list[Sequence] = []
        self.num_preempted = 0
        self._new_cache = new_cache
        self.max_queue = max_queue
        # Filled by the callers' threads, emptied by the worker.
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._arrived = threading.Condition()
        self._returned: collections.deque[Sequence] = collections.deque()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self._returned)

    def add(self, sequence: Sequence) -> None:
        with self._arrived:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(
                    f"{self.max_queue} requests are already waiting or leaving"
                )
            self._waiting.append(sequence)
            self._arrived.notify()

    def drop_waiting(self, retire: Callable[[Sequence], bool]) -> None:
        """Forget the waiting sequences ``retire`` drops: their places free now.

        Left in line, a request whose client went away would hold its place
        until it reached the head, and with the batch busy that can be long.
        """
        with self._arrived:
            kept = [seq for seq in self._waiting if not retire(seq)]
            self._waiting = collections.deque(kept)

    def admit(self, retire: Callable[[Sequence], bool]) -> None:
        """Fill the batch; ``retire`` drops a cancelled sequence and says so.

        An idle batch waits for a request, then for any others that follow it
        at most ``batch_wait_s`` apart (up to a full batch): a sweep reads every
        streamed layer, so requests that arrive a moment apart, as a burst does
        through the HTTP side, share their first sweep instead of paying one
        each. A running batch takes what is waiting and goes on at once.
        """
        self.running = [seq for seq in self.running if not retire(seq)]
        gathering = not self.running
        while len(self.running) < self.max_batch:
            if not self.running:
                wait = _IDLE_POLL_S
            else:
                wait = self.batch_wait_s if gathering else 0.0
            sequence = self._next(wait)
            if sequence is None:
                return
            if retire(sequence):
                continue
            if self.running and self._kv_used() + sequence.num_tokens > self.kv_tokens:
                self._returned.appendleft(sequence)
                return
            sequence.start(self._new_cache())
            self.running.append(sequence)

    def retire_done(self) -> None:
        """Drop finished, failed and cancelled sequences from the batch."""
        self.running = [seq for seq in self.running if not seq.is_done]

    def plan(self) -> list[Slot]:
        """This sweep's slots, after making room in the KV cache if needed."""
        slots = self._slots()
        while len(self.running) > 1 and _kv_after(slots) > self.kv_tokens:
            self._preempt(self.running[-1])
            slots = self._slots()
        return slots

    def drain(self) -> list[Sequence]:
        """Everything not yet finished, removed from the scheduler."""
        left = self.running + list(self._returned)
        self.running, self._returned = [], collections.deque()
        while (sequence := self._next(0.0)) is not None:
            left.append(sequence)
        return left

    def _slots(self) -> list[Slot]:
        decoding = [seq for seq in self.running if not seq.is_prefilling]
        budget = max(self.max_sweep_tokens - len(decoding), 1)
        slots = [Slot(seq, 1) for seq in decoding]
        # Blocks the prompt chunks planned so far fill in this sweep: a later
        # prompt that starts with the same tokens takes them. It runs in this
        # sweep too, so a failed sweep fails both; and a preemption takes the
        # latest first, so the filler never leaves while the taker stays.
        filling: dict[BlockKey, int] = {}
        for sequence in self.running:
            if sequence.is_prefilling and budget > 0:
                sequence.share(filling)
                count = min(len(sequence.pending_ids), budget)
                slots.append(Slot(sequence, count))
                filling |= sequence.cache.filled_by(sequence.pending_ids[:count])
                budget -= count
        return slots

    def _preempt(self, sequence: Sequence) -> None:
        self.running.remove(sequence)
        sequence.release()
        sequence.state = RequestState.WAITING
        self._returned.appendleft(sequence)
        self.num_preempted += 1

    def _kv_used(self) -> int:
        return sum(seq.num_tokens for seq in self.running)

    def _next(self, wait_s: float) -> Sequence | None:
        if self._returned:
            return self._returned.popleft()
        with self._arrived:
            if wait_s > 0 and not self._waiting:
                self._arrived.wait(timeout=wait_s)
            return self._waiting.popleft() if self._waiting else None


def _kv_after(slots: list[Slot]) -> int:
    return sum(slot.sequence.num_cached + slot.count for slot in slots)
