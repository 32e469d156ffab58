"""Fixtures of the HTTP tests: a scripted stand-in for the engine, and a client."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import PreTrainedTokenizerBase

from engine.options import EngineOptions
from engine.request import (
    EmbeddingEvent,
    EmbeddingRequest,
    ErrorEvent,
    EventSink,
    FinishEvent,
    GenerationRequest,
    Request,
    RequestHandle,
    TokenEvent,
)
from engine.stats import EngineTotals, SweepStats
from server.app import create_app
from server.settings import Settings

CANCEL_WAIT_S = 5.0


class FakeEngine:
    """Plays a scripted answer from its own thread, as the real worker does."""

    model_id = "smollm2-135m-instruct"
    created = 1_700_000_000
    is_alive = True
    plan: dict[str, object] = {}
    num_running = num_waiting = num_preempted = 0
    stop_token_ids = frozenset({2})  # SmolLM2's <|im_end|>
    kv_tokens_used = kv_tokens_budget = 0
    totals = EngineTotals()
    options = EngineOptions(torch.device("cpu"), torch.float32)
    hidden_size = 4
    vector = (3.0, 0.0, 4.0, 0.0)  # every input's embedding, before normalizing

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.context_length = 512
        self.pieces = ["Hello", ",", " world", "!"]
        self.error: Exception | None = None  # sent after the pieces, not a finish
        self.submit_error: Exception | None = None
        self.stall_after_first = False  # then wait for a cancel after one piece
        self.requests: list[Request] = []
        self.handles: list[RequestHandle] = []
        self.sweep_observers: list[Callable[[SweepStats], None]] = []

    def submit(self, request: Request, sink: EventSink) -> RequestHandle:
        if self.submit_error is not None:
            raise self.submit_error
        handle = RequestHandle(request.request_id)
        self.requests.append(request)
        self.handles.append(handle)
        if isinstance(request, EmbeddingRequest):
            sink(EmbeddingEvent(self.vector, len(request.prompt_ids)))
            return handle
        worker = threading.Thread(target=self._play, args=(request, sink, handle))
        worker.start()
        return handle

    def _play(
        self, request: GenerationRequest, sink: EventSink, handle: RequestHandle
    ) -> None:
        pieces = self.pieces[: request.params.max_tokens]
        for count, text in enumerate(pieces, start=1):
            sink(TokenEvent(text, count))
            if self.stall_after_first:
                _wait_for_cancel(handle)
                return
        if self.error is not None:
            sink(ErrorEvent(self.error))
            return
        reason = "length" if len(self.pieces) > len(pieces) else "stop"
        sink(FinishEvent(reason, len(request.prompt_ids), len(pieces)))


def _wait_for_cancel(handle: RequestHandle) -> None:
    deadline = time.monotonic() + CANCEL_WAIT_S
    while not handle.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keeps the developer's environment and ./config.yaml out of every test."""
    for name in list(os.environ):
        if name.startswith("LAYERSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def fake_engine(smollm2_tokenizer: PreTrainedTokenizerBase) -> FakeEngine:
    return FakeEngine(smollm2_tokenizer)


@pytest.fixture
def client(settings: Settings, fake_engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(settings, fake_engine)) as test_client:
        yield test_client
