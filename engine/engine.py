"""The engine: a bounded admission queue and one worker thread that sweeps.

Every torch call happens on the worker thread. Callers hand in a request and a
sink; the worker feeds the sink with events. Between sweeps the worker admits
waiting requests (up to ``max_batch`` running), drops cancelled ones, and
retires finished ones, so requests join and leave at sweep boundaries.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import torch
from transformers import PreTrainedTokenizerBase

from engine.detokenize import TextStream
from engine.errors import EngineStoppedError, InvalidRequestError, QueueFullError
from engine.options import EngineOptions
from engine.request import (
    ErrorEvent,
    Event,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    RequestHandle,
    RequestState,
    TokenEvent,
)
from engine.runner import ModelRunner, SweepInput
from engine.sampling import make_generator, sample_next
from engine.sequence import Sequence

logger = logging.getLogger(__name__)

_IDLE_POLL_S = 0.1


class Engine:
    def __init__(
        self,
        model_id: str,
        tokenizer: PreTrainedTokenizerBase,
        runner: ModelRunner,
        options: EngineOptions,
        stop_token_ids: frozenset[int],
    ) -> None:
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.runner = runner
        self.options = options
        self.context_length = _context_length(runner.model.config)
        self.created = int(time.time())
        self.num_sweeps = 0
        self._stop_token_ids = stop_token_ids
        self._waiting: queue.Queue[Sequence] = queue.Queue(maxsize=options.max_queue)
        self._running: list[Sequence] = []
        self._stopping = threading.Event()
        self._worker = threading.Thread(
            target=self._loop, name="layerstream-worker", daemon=True
        )
        self._worker.start()

    @property
    def num_waiting(self) -> int:
        return self._waiting.qsize()

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def is_alive(self) -> bool:
        return self._worker.is_alive() and not self._stopping.is_set()

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        if self._stopping.is_set():
            raise EngineStoppedError("the engine is shutting down")
        self._check(request)
        handle = RequestHandle(request.request_id)
        sequence = Sequence(
            request=request,
            handle=handle,
            sink=sink,
            text=TextStream(self.tokenizer, request.params.stop),
            generator=make_generator(request.params.seed),
        )
        try:
            self._waiting.put_nowait(sequence)
        except queue.Full:
            raise QueueFullError(
                f"{self.options.max_queue} requests are already waiting"
            ) from None
        return handle

    def _check(self, request: GenerationRequest) -> None:
        """Refuse here what would otherwise fail a whole sweep of other requests."""
        prompt, vocab = request.prompt_ids, self.runner.vocab_size
        if not prompt:
            raise InvalidRequestError("the prompt is empty", "messages")
        if len(prompt) >= self.context_length:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens; the context holds "
                f"{self.context_length}",
                "messages",
            )
        if not all(0 <= token < vocab for token in prompt):
            raise InvalidRequestError(f"token ids must be in [0, {vocab})", "prompt")
        if request.params.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1", "max_tokens")

    def shutdown(self) -> None:
        self._stopping.set()
        self._worker.join()
        self.runner.close()

    def _loop(self) -> None:
        logger.info("worker started")
        with torch.inference_mode():
            while not self._stopping.is_set():
                try:
                    if self._admit():
                        self._step()
                except Exception as error:  # the only worker must outlive a bug
                    logger.exception("worker iteration failed")
                    self._fail_running(error)
        self._fail_all(EngineStoppedError("the engine was shut down"))
        logger.info("worker stopped")

    def _admit(self) -> bool:
        """Move waiting requests into the batch; False when there is nothing to run."""
        self._running = [
            seq for seq in self._running if not self._retire_if_cancelled(seq)
        ]
        while len(self._running) < self.options.max_batch:
            sequence = self._next_waiting(block=not self._running)
            if sequence is None:
                break
            if not self._retire_if_cancelled(sequence):
                sequence.start(self.runner.new_cache())
                self._running.append(sequence)
        return bool(self._running)

    def _next_waiting(self, block: bool) -> Sequence | None:
        try:
            return (
                self._waiting.get(timeout=_IDLE_POLL_S)
                if block
                else self._waiting.get_nowait()
            )
        except queue.Empty:
            return None

    def _step(self) -> None:
        batch = self._running
        inputs = [SweepInput(seq.pending_ids, seq.cache) for seq in batch]
        try:
            logits = self.runner.sweep(inputs)
        except Exception as error:  # one failed sweep must not end the worker
            logger.exception("sweep failed; failing its %d requests", len(batch))
            self._fail_running(error)
            return
        self.num_sweeps += 1
        for sequence, row in zip(batch, logits, strict=True):
            try:
                self._advance(sequence, row)
            except Exception as error:  # this request's fault; the others go on
                logger.exception("request %s failed", sequence.request_id)
                self._finish_with_error(sequence, error)
        self._running = [seq for seq in batch if not seq.is_done]

    def _advance(self, sequence: Sequence, logits: torch.Tensor) -> None:
        token = sample_next(logits, sequence.request.params, sequence.generator)
        if sequence.first_token_at is None:
            sequence.first_token_at = time.monotonic()
        if token in self._stop_token_ids:
            self._finish(sequence, "stop")
            return
        sequence.output_ids.append(token)
        sequence.pending_ids = [token]
        self._emit(sequence, sequence.text.push(token))
        if sequence.text.stopped:
            self._finish(sequence, "stop")
        elif self._at_limit(sequence):
            self._finish(sequence, "length")

    def _at_limit(self, sequence: Sequence) -> bool:
        total = sequence.num_prompt_tokens + sequence.num_output_tokens
        at_cap = sequence.num_output_tokens >= sequence.request.params.max_tokens
        return at_cap or total >= self.context_length

    def _finish(self, sequence: Sequence, reason: FinishReason) -> None:
        self._emit(sequence, sequence.text.flush())
        sequence.state = RequestState.FINISHED
        sequence.release()
        self._send(
            sequence,
            FinishEvent(reason, sequence.num_prompt_tokens, sequence.num_output_tokens),
        )

    def _finish_with_error(self, sequence: Sequence, error: Exception) -> None:
        sequence.state = RequestState.FAILED
        sequence.release()
        self._send(sequence, ErrorEvent(error))

    def _retire_if_cancelled(self, sequence: Sequence) -> bool:
        if not sequence.handle.cancelled:
            return False
        sequence.state = RequestState.CANCELLED
        sequence.release()
        logger.info("request %s cancelled", sequence.request_id)
        return True

    def _emit(self, sequence: Sequence, text: str) -> None:
        if text:
            self._send(sequence, TokenEvent(text, sequence.num_output_tokens))

    def _send(self, sequence: Sequence, event: Event) -> None:
        try:
            sequence.sink(event)
        except Exception:  # a caller that went away is treated as a cancel
            logger.debug(
                "sink of %s failed; cancelling", sequence.request_id, exc_info=True
            )
            sequence.handle.cancel()

    def _fail_running(self, error: Exception) -> None:
        for sequence in self._running:
            self._finish_with_error(sequence, error)
        self._running = []

    def _fail_all(self, error: Exception) -> None:
        self._fail_running(error)
        while (sequence := self._next_waiting(block=False)) is not None:
            self._finish_with_error(sequence, error)


def _context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 2048)
