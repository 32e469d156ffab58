"""Where the server is in its life, and the gate that turns requests away.

The HTTP port answers while the model loads, so that probes and clients get a
clear answer instead of a refused connection; work that needs the model is
refused with a 503 until it is ready, and again once shutdown has begun.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import send_failure
from server.exceptions import ModelLoading, ShuttingDown

# Probes, metrics, the model list, the API description and the chat page
# answer in every phase.
OPEN_PATHS = frozenset(
    {"/health", "/ready", "/metrics", "/v1/models", "/openapi.json", "/docs", "/"}
)


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"


@dataclass
class Lifecycle:
    phase: Phase = Phase.LOADING
    # Requests past the gate and not yet answered; only the event loop writes it.
    num_in_flight: int = 0


class ReadinessGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        lifecycle: Lifecycle = scope["app"].state.lifecycle
        if lifecycle.phase is Phase.LOADING:
            await send_failure(ModelLoading(), scope, send)
            return
        if lifecycle.phase is Phase.DRAINING:
            await send_failure(ShuttingDown(), scope, send)
            return
        lifecycle.num_in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            lifecycle.num_in_flight -= 1
