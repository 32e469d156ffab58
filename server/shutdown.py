"""Stopping on SIGTERM or SIGINT: refuse new work, drain, then end the rest.

The first signal closes the gate (new requests get 503) and gives the requests
in flight ``drain_timeout`` seconds to finish; then the engine stops, which
ends what is left with an error event. A second signal stops at once. A signal
while the model loads abandons the load.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import uvicorn
from fastapi import FastAPI

from engine import Engine
from server.lifecycle import Lifecycle, Phase

logger = logging.getLogger(__name__)

_POLL_S = 0.05
# After the engine stops, the error events still have to reach their clients.
_FLUSH_TIMEOUT_S = 5.0


class StopRequested(Exception):
    """A signal arrived before the engine ran; raised on the main thread."""


class Shutdown:
    def __init__(self, app: FastAPI, server: uvicorn.Server, grace_s: float) -> None:
        self.server = server
        self.grace_s = grace_s
        self.engine: Engine | None = None
        self._lifecycle: Lifecycle = app.state.lifecycle
        self._has_signal = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def attach(self, engine: Engine) -> None:
        self.engine = engine

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.engine is None:
            logger.info("%s received while loading; stopping", name)
            raise StopRequested
        if self._has_signal:
            logger.info("%s received again; stopping now", name)
            self.engine.stop()
            return
        self._has_signal = True
        self._lifecycle.phase = Phase.DRAINING
        logger.info(
            "%s received; draining %d requests for up to %gs",
            name, self._lifecycle.num_in_flight, self.grace_s,
        )  # fmt: skip
        # The handler runs on the main thread, inside the engine's loop: the
        # wait happens elsewhere.
        threading.Thread(target=self._drain, name="layerstream-drain").start()

    def _drain(self) -> None:
        self._wait_for_in_flight(self.grace_s)
        left = self._lifecycle.num_in_flight
        if left:
            logger.warning("drain time over; ending %d requests", left)
        assert self.engine is not None
        self.engine.stop()

    def stop_http(self) -> None:
        """Lets the last responses out, then closes the HTTP side."""
        self._wait_for_in_flight(_FLUSH_TIMEOUT_S)
        self.server.should_exit = True

    def _wait_for_in_flight(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._lifecycle.num_in_flight and time.monotonic() < deadline:
            time.sleep(_POLL_S)
