"""The engine: a bounded admission queue and one worker thread that sweeps.

Every torch call happens on the worker thread. Callers hand in a request and a
sink; the worker feeds the sink with events. Between sweeps the scheduler
admits waiting requests, drops cancelled ones and retires finished ones, so
requests join and leave at sweep boundaries. An embedding request runs its
prompt in those same sweeps and leaves with its pooled vector.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from engine.detokenize import TextStream
from engine.errors import (
    EngineStoppedError,
    InvalidRequestError,
    QueueFullError,
    RequestTimeoutError,
)
from engine.options import EngineOptions
from engine.request import (
    EmbeddingEvent,
    EmbeddingRequest,
    ErrorEvent,
    Event,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    Request,
    RequestHandle,
    RequestState,
    TokenEvent,
)
from engine.runner import ModelRunner, SweepInput, SweepOutput
from engine.sampling import adjust_logits, make_generator, sample_next, token_logprob
from engine.scheduler import Scheduler, Slot
from engine.sequence import Sequence
from engine.stats import EngineTotals, SweepStats

logger = logging.getLogger(__name__)

# The scheduler's queue also holds requests whose client left until the worker
# reaches them; this much room keeps them from crowding out newcomers.
_QUEUE_ROOM_FACTOR = 2


class Engine:
    def __init__(
        self,
        model_id: str,
        tokenizer: PreTrainedTokenizerBase,
        runner: ModelRunner,
        options: EngineOptions,
        stop_token_ids: frozenset[int],
        kv_tokens: int | None = None,
        worker_thread: bool = True,
    ) -> None:
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.runner = runner
        self.options = options
        self.created = int(time.time())
        self.totals = EngineTotals()
        self.plan: dict[str, object] = {}  # the residency plan, for the API
        # Called on the worker thread after each sweep; must be quick.
        self.sweep_observers: list[Callable[[SweepStats], None]] = []
        self._stop_token_ids = stop_token_ids
        model_context = _context_length(runner.model.config)
        kv_tokens = kv_tokens or options.max_batch * model_context
        # A sequence longer than the KV budget could never run: the context
        # served, and reported to clients, is the smaller of the two.
        self.context_length = min(model_context, kv_tokens)
        runner.cap_kv(kv_tokens, options.max_batch)
        # Submitted and not yet admitted: their deadlines and cancels are
        # watched here, since the scheduler only sees them once admitted.
        self._queued: list[Sequence] = []
        self._queued_lock = threading.Lock()
        self._scheduler = Scheduler(
            options.max_batch,
            options.max_queue * _QUEUE_ROOM_FACTOR + options.max_batch,
            options.max_sweep_tokens,
            kv_tokens,
            runner.new_cache,
            options.batch_wait_s,
        )
        self._stopping = threading.Event()
        self._has_exited = False
        self._worker: threading.Thread | None = None
        if worker_thread:
            self._worker = threading.Thread(
                target=self.run, name="layerstream-worker", daemon=True
            )
            self._worker.start()

    @property
    def num_sweeps(self) -> int:
        return self.totals.sweeps

    @property
    def num_waiting(self) -> int:
        """Requests waiting for a place in the batch, those whose client left aside."""
        with self._queued_lock:
            gone = sum(_is_queued(seq) and seq.handle.cancelled for seq in self._queued)
        return max(self._scheduler.num_waiting - gone, 0)

    @property
    def num_preempted(self) -> int:
        """Sequences that gave their KV cache back to make room, since start."""
        return self._scheduler.num_preempted

    @property
    def num_running(self) -> int:
        return len(self._scheduler.running)

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Tokens that end a sequence; a constraint must leave them allowed."""
        return self._stop_token_ids

    @property
    def hidden_size(self) -> int:
        """Length of an embedding vector."""
        return int(self.runner.config.hidden_size)

    @property
    def kv_tokens_used(self) -> int:
        """Tokens held in the KV caches of the running sequences."""
        return sum(seq.num_cached for seq in list(self._scheduler.running))

    @property
    def kv_tokens_budget(self) -> int:
        return self._scheduler.kv_tokens

    @property
    def is_alive(self) -> bool:
        return not self._has_exited and not self._stopping.is_set()

    def submit(self, request: Request, sink: EventSink) -> RequestHandle:
        if self._stopping.is_set():
            raise EngineStoppedError("the engine is shutting down")
        if isinstance(request, EmbeddingRequest):
            self._check_embedding(request)
        else:
            self._check(request)
        handle = RequestHandle(request.request_id)
        sequence = self._sequence(request, handle, sink)
        with self._queued_lock:
            live = sum(
                _is_queued(seq) and not seq.handle.cancelled for seq in self._queued
            )
            if live >= self.options.max_queue + self._free_places():
                raise QueueFullError(
                    f"{self.options.max_queue} requests are already waiting"
                )
            self._scheduler.add(sequence)
            self._queued.append(sequence)
        return handle

    def _free_places(self) -> int:
        """Places the batch has free: a burst that fills them is not queued.

        Its requests wait in line only until the next sweep boundary, so the
        server takes ``max_batch`` plus ``max_queue`` requests at once.
        """
        return max(0, self.options.max_batch - len(self._scheduler.running))

    def _sequence(
        self, request: Request, handle: RequestHandle, sink: EventSink
    ) -> Sequence:
        if isinstance(request, EmbeddingRequest):
            return Sequence(request, handle, sink, text=None, generator=None)
        return Sequence(
            request=request,
            handle=handle,
            sink=sink,
            text=TextStream(self.tokenizer, request.params.stop),
            generator=make_generator(request.params.seed),
            constraint=request.constraint() if request.constraint else None,
        )

    def stop(self) -> None:
        """Ask the loop to end after the current sweep; safe from any thread."""
        self._stopping.set()

    def shutdown(self) -> None:
        self.stop()
        if self._worker is not None:
            self._worker.join()
        self.runner.close()

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
        self._check_vocab(prompt, "prompt")
        if not all(0 <= token < vocab for token, _ in request.params.logit_bias):
            raise InvalidRequestError(
                f"logit_bias token ids must be in [0, {vocab})", "logit_bias"
            )
        if request.params.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1", "max_tokens")

    def _check_embedding(self, request: EmbeddingRequest) -> None:
        prompt = request.prompt_ids
        if not prompt:
            raise InvalidRequestError("the input is empty", "input")
        # Nothing is generated after it, so an input may fill the whole context.
        if len(prompt) > self.context_length:
            raise InvalidRequestError(
                f"the input has {len(prompt)} tokens; the context holds "
                f"{self.context_length}",
                "input",
            )
        self._check_vocab(prompt, "input")

    def _check_vocab(self, prompt: list[int], param: str) -> None:
        vocab = self.runner.vocab_size
        if not all(0 <= token < vocab for token in prompt):
            raise InvalidRequestError(f"token ids must be in [0, {vocab})", param)

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stopping.is_set():
                try:
                    self._watch_queued()
                    self._scheduler.drop_waiting(self._retire_if_dropped)
                    self._scheduler.admit(self._retire_if_dropped)
                    if self._scheduler.running:
                        self._step()
                except Exception as error:  # the only worker must outlive a bug
                    logger.exception("worker iteration failed")
                    self._fail(self._scheduler.running, error)
                    self._scheduler.retire_done()

    def run(self) -> None:
        """The worker loop, on the calling thread, until ``stop``.

        The server runs it on the main thread: torch's thread pool answers
        small operations there markedly faster than on a second thread.
        """
        logger.info("worker started")
        try:
            self._loop()
        finally:
            self._has_exited = True
        self._fail(self._scheduler.drain(), EngineStoppedError("the engine stopped"))
        logger.info("worker stopped")

    def _step(self) -> None:
        slots = self._scheduler.plan()
        inputs = [
            SweepInput(
                slot.token_ids,
                slot.sequence.cache,
                slot.wants_logits,
                slot.wants_hidden,
            )
            for slot in slots
        ]
        try:
            outputs = self.runner.sweep(inputs)
        except Exception as error:  # one failed sweep must not end the worker
            logger.exception("sweep failed; failing its %d requests", len(slots))
            self._fail([slot.sequence for slot in slots], error)
            self._scheduler.retire_done()
            return
        sweep = self.runner.last_sweep
        self.totals.add(sweep)
        for observe in self.sweep_observers:
            observe(sweep)
        logger.debug(
            "sweep %d: %d sequences, %d tokens, %d bytes streamed, "
            "%.1f ms waiting for weights, %.1f ms computing",
            self.totals.sweeps, sweep.sequences, sweep.tokens, sweep.bytes_streamed,
            sweep.wait_s * 1e3, sweep.compute_s * 1e3,
        )  # fmt: skip
        for slot, output in zip(slots, outputs, strict=True):
            self._after_sweep(slot, output)
        self._scheduler.retire_done()

    def _after_sweep(self, slot: Slot, output: SweepOutput) -> None:
        sequence = slot.sequence
        sequence.consumed(slot.count)
        try:
            if output.hidden is not None:
                self._pool(sequence, output.hidden)
            elif output.logits is not None:
                self._advance(sequence, output.logits)
        except InvalidRequestError as error:  # refused on the way: its own fault
            logger.warning("request %s refused: %s", sequence.request_id, error)
            self._fail([sequence], error)
        except Exception as error:  # this request alone fails; the others go on
            logger.exception("request %s failed", sequence.request_id)
            self._fail([sequence], error)

    def _pool(self, sequence: Sequence, hidden: torch.Tensor) -> None:
        sequence.pool(hidden)
        if sequence.pending_ids:
            return  # more chunks of the prompt to come
        embedding = EmbeddingEvent(
            sequence.mean_hidden(), sequence.num_prompt_tokens, sequence.queue_s
        )
        # Its keys and values serve nothing more: the blocks go back at once.
        sequence.state = RequestState.FINISHED
        sequence.release()
        self._send(sequence, embedding)

    def _advance(self, sequence: Sequence, logits: torch.Tensor) -> None:
        params, prompt_ids = sequence.request.params, sequence.request.prompt_ids
        constraint = sequence.constraint
        # The grammar's mask comes first: penalties and bias then move only
        # allowed tokens, and a forbidden token's -inf survives them.
        allowed = logits if constraint is None else constraint.mask(logits)
        scores = adjust_logits(allowed, params, prompt_ids, sequence.output_ids)
        token = sample_next(scores, params, sequence.generator)
        if token in self._stop_token_ids:
            self._finish(sequence, "stop")
            return
        if params.logprobs is not None:
            # Of the raw logits: what the model thought, not what was sampled from.
            entry = token_logprob(logits, token, params.logprobs)
            sequence.unsent_logprobs.append(entry)
        sequence.output_ids.append(token)
        sequence.pending_ids = [token]
        if constraint is not None:
            constraint.accept(token)
        self._emit(sequence, sequence.text.push(token))
        # A finished grammar admits only a stop token: end now, saving a sweep.
        is_grammar_done = constraint is not None and constraint.is_finished
        if sequence.text.stopped or is_grammar_done:
            self._finish(sequence, "stop")
        elif self._at_limit(sequence):
            self._finish(sequence, "length")

    def _at_limit(self, sequence: Sequence) -> bool:
        at_cap = sequence.num_output_tokens >= sequence.request.params.max_tokens
        return at_cap or sequence.num_tokens >= self.context_length

    def _finish(self, sequence: Sequence, reason: FinishReason) -> None:
        self._emit(sequence, sequence.text.flush(), is_final=True)
        sequence.state = RequestState.FINISHED
        sequence.release()
        finish = FinishEvent(
            reason,
            sequence.num_prompt_tokens,
            sequence.num_output_tokens,
            sequence.queue_s,
        )
        self._send(sequence, finish)

    def _fail(self, sequences: list[Sequence], error: Exception) -> None:
        for sequence in sequences:
            sequence.state = RequestState.FAILED
            sequence.release()
            self._send(sequence, ErrorEvent(error))

    def _watch_queued(self) -> None:
        """Times out late queued requests; forgets those admitted or dropped."""
        with self._queued_lock:
            self._queued = [seq for seq in self._queued if _is_queued(seq)]
            late = [seq for seq in self._queued if self._is_late(seq)]
        for sequence in late:
            self._time_out(sequence)

    def _is_late(self, sequence: Sequence) -> bool:
        timeout = self.options.request_timeout_s
        if not timeout or sequence.handle.cancelled:
            return False
        return time.monotonic() - sequence.submitted_at > timeout

    def _time_out(self, sequence: Sequence) -> None:
        # Cancelling makes the scheduler drop it, at once if running, else
        # when it reaches the head of the queue; the caller hears now.
        sequence.handle.cancel()
        seconds = self.options.request_timeout_s
        logger.info("request %s timed out after %gs", sequence.request_id, seconds)
        error = RequestTimeoutError(f"the request took longer than {seconds:g} s")
        self._send(sequence, ErrorEvent(error))

    def _retire_if_dropped(self, sequence: Sequence) -> bool:
        if self._is_late(sequence):
            self._time_out(sequence)
        if not sequence.handle.cancelled:
            return False
        sequence.state = RequestState.CANCELLED
        sequence.release()
        logger.info("request %s cancelled", sequence.request_id)
        return True

    def _emit(self, sequence: Sequence, text: str, is_final: bool = False) -> None:
        # Logprobs wait for the text they belong to; the last event takes the
        # rest (the tokens of a stop string, say), so none are lost.
        if not text and not (is_final and sequence.unsent_logprobs):
            return
        logprobs, sequence.unsent_logprobs = tuple(sequence.unsent_logprobs), []
        self._send(sequence, TokenEvent(text, sequence.num_output_tokens, logprobs))

    def _send(self, sequence: Sequence, event: Event) -> None:
        try:
            sequence.sink(event)
        except Exception:  # a caller that went away is treated as a cancel
            logger.debug("sink of %s failed; cancelling", sequence.request_id)
            sequence.handle.cancel()


def _is_queued(sequence: Sequence) -> bool:
    # Read from other threads too: the worker may admit it at any moment.
    return sequence.state is RequestState.WAITING


def _context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 2048)
