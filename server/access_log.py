"""One log line per finished HTTP request, with its token counts when it has any."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

# Probes poll these; at INFO they would drown the lines that matter.
QUIET_PATHS = frozenset({"/health"})


@dataclass
class RequestRecord:
    """What a route learns about its request, for the access log to report."""

    request_id: str
    outcome: str = "unfinished"  # stop, length, error, cancelled
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 500
        started = time.perf_counter()

        async def send_watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        finally:
            seconds = time.perf_counter() - started
            _log(scope, status, seconds, state.get("record"))


def _log(
    scope: Scope, status: int, seconds: float, record: RequestRecord | None
) -> None:
    level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
    route = f"{scope['method']} {scope['path']} {status}"
    if record is None:
        logger.log(level, "%s %.3fs", route, seconds)
        return
    rate = record.completion_tokens / seconds if seconds > 0 else 0.0
    logger.log(
        level,
        "%s %s %s prompt=%d completion=%d %.3fs %.1f tok/s",
        record.request_id,
        route,
        record.outcome,
        record.prompt_tokens,
        record.completion_tokens,
        seconds,
        rate,
    )
