"""One log line per finished HTTP request, with its token counts when it has any."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.schemas.error import ErrorDetail

logger = logging.getLogger(__name__)

# Probes poll these; at INFO they would drown the lines that matter.
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})


@dataclass
class RequestRecord:
    """What a route learns about its request, for the access log to report."""

    request_id: str
    outcome: str = "unfinished"  # stop, length, embedded, error, timeout, cancelled
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float | None = None  # known once the engine reports the finish
    arrived_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    token_gaps: list[float] = field(default_factory=list)  # seconds per token
    error: ErrorDetail | None = None  # what the client was told, if it failed
    # Per choice: tokens so far and when the newest came. The gaps are taken
    # within each choice, since a client reads each choice as its own stream.
    _choice_counts: dict[int, int] = field(default_factory=dict)
    _choice_last_at: dict[int, float] = field(default_factory=dict)

    def note_tokens(self, count: int, choice: int = 0) -> None:
        """``count`` tokens of ``choice`` generated so far, the newest just now."""
        added = count - self._choice_counts.get(choice, 0)
        if added <= 0:
            return  # nothing new: a finish repeating the count, say
        now = time.monotonic()
        last_at = self._choice_last_at.get(choice)
        if self.first_token_at is None:
            self.first_token_at = now
        if last_at is not None:
            self.token_gaps.append((now - last_at) / added)
        self._choice_last_at[choice] = now
        self._choice_counts[choice] = count
        self.completion_tokens = sum(self._choice_counts.values())

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.arrived_at

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.arrived_at

    def fields(self) -> dict[str, object]:
        """The summary as data, for structured (JSON) log lines."""
        return {
            "request_id": self.request_id,
            "outcome": self.outcome,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "queue_s": _rounded(self.queue_s),
            "ttft_s": _rounded(self.ttft_s),
        }


class StatusWatch:
    """An ASGI ``send`` that remembers the response's status as it goes by."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500  # what the client gets if the app dies before answering

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - started
            _log(scope, watch.status, seconds, state.get("record"), state.get("error"))


def _log(
    scope: Scope,
    status: int,
    seconds: float,
    record: RequestRecord | None,
    error: ErrorDetail | None,
) -> None:
    level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
    path = _printable(scope["path"])
    route = f"{scope['method']} {path} {status}"
    # Refused at the door, or failed on the way (a stream's error event).
    refusal = _refusal((record.error if record else None) or error)
    said = "".join(f" {key}={value}" for key, value in refusal.items())
    http = {"method": scope["method"], "path": path, "status": status, **refusal}
    if record is None:
        fields = {**http, "seconds": _rounded(seconds)}
        logger.log(level, "%s%s %.3fs", route, said, seconds, extra={"fields": fields})
        return
    rate = record.completion_tokens / seconds if seconds > 0 else 0.0
    fields = {**record.fields(), **http, "seconds": _rounded(seconds)}
    logger.log(
        level,
        "%s %s %s%s prompt=%d completion=%d queue=%s ttft=%s %.3fs %.1f tok/s",
        record.request_id,
        route,
        record.outcome,
        said,
        record.prompt_tokens,
        record.completion_tokens,
        _seconds(record.queue_s),
        _seconds(record.ttft_s),
        seconds,
        rate,
        extra={"fields": {**fields, "tokens_per_s": round(rate, 1)}},
    )


def _refusal(error: ErrorDetail | None) -> dict[str, str]:
    if error is None:
        return {}
    said = {"error": error.code or error.type}
    if error.param:
        said["param"] = _printable(error.param)
    return said


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _printable(path: str) -> str:
    # The path arrives percent-decoded: encoded again, a newline or NUL sent
    # by a client cannot start a forged line of its own in the log.
    return quote(path, safe="/:@!$&'()*+,;=-._~")
