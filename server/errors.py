"""The one error boundary: every failure becomes an OpenAI-shaped error body.

``failure_of`` is the single mapping from exception type to status and error
fields. Known types reach it through FastAPI exception handlers; anything else
is caught by ``InternalErrorBoundary``, which logs it once with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.errors import (
    EngineStoppedError,
    InvalidRequestError,
    QueueFullError,
    RequestTimeoutError,
)
from server.exceptions import ApiError
from server.schemas.error import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)

# A queued request frees its place within a few sweeps; retrying sooner is noise.
RETRY_AFTER_S = 1
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Failure:
    status_code: int
    detail: ErrorDetail
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=self.detail).model_dump()
        return JSONResponse(body, self.status_code, headers=self.headers)


def failure_of(exc: Exception) -> Failure:
    match exc:
        case ApiError():
            detail = ErrorDetail(
                message=str(exc), type=exc.type, param=exc.param, code=exc.code
            )
            retry = exc.retry_after_s
            headers = {} if retry is None else {"Retry-After": str(retry)}
            return Failure(exc.status_code, detail, headers)
        case RequestValidationError():
            return Failure(400, _validation_detail(exc.errors()))
        case InvalidRequestError():
            return Failure(400, _invalid_request(str(exc), exc.param))
        case QueueFullError():
            return _busy(f"the server is busy ({exc}); retry later", "queue_full")
        case EngineStoppedError():
            return _busy(f"the engine is not running: {exc}", "engine_stopped")
        case RequestTimeoutError():
            return Failure(504, _server_error(str(exc), "request_timeout"))
        case _:
            message = f"internal error ({type(exc).__name__}); see the server log"
            return Failure(500, _server_error(message, INTERNAL_ERROR))


def _server_error(message: str, code: str) -> ErrorDetail:
    return ErrorDetail(message=message, type="server_error", code=code)


def _busy(message: str, code: str) -> Failure:
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return Failure(503, _server_error(message, code), headers)


def _http_failure(exc: HTTPException, route: str) -> Failure:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    detail = _invalid_request(f"{route}: {exc.detail}", code=code)
    return Failure(exc.status_code, detail, dict(exc.headers or {}))


def _validation_detail(errors: Sequence[Mapping[str, Any]]) -> ErrorDetail:
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return _invalid_request(f"the request body is not valid JSON: {reason}")
    # The first element of a location says where it came from ("body"); the
    # rest is the field path a client knows.
    path = ".".join(str(part) for part in first["loc"][1:] if not _is_tag(part))
    if not path:
        return _invalid_request(
            "the request body must be a JSON object sent as application/json"
        )
    reason = str(first["msg"]).removeprefix("Value error, ")
    return _invalid_request(f"{path}: {reason}", param=path)


# Names pydantic gives the members of a union in an error's location; a client
# never sent them, so the field path leaves them out.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _is_tag(part: object) -> bool:
    if not isinstance(part, str):
        return False  # a list index
    return (
        part in _TYPE_TAGS
        or any(mark in part for mark in "[]'-(")
        or part[:1].isupper()  # a model class of a union
    )


def _invalid_request(
    message: str, param: str | None = None, code: str | None = None
) -> ErrorDetail:
    return ErrorDetail(
        message=message, type="invalid_request_error", param=param, code=code
    )


async def _handle_known(request: Request, exc: Exception) -> JSONResponse:
    failure = failure_of(exc)
    note_error(request.scope, failure)
    return failure.response()


def note_error(scope: Scope, failure: Failure) -> None:
    """Leaves the error where the metrics and the access log read it."""
    scope.setdefault("state", {})["error"] = failure.detail


async def send_failure(exc: Exception, scope: Scope, send: Send) -> None:
    """Answers from a middleware, before the app has read the request."""
    failure = failure_of(exc)
    note_error(scope, failure)
    await failure.response()(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _handle_http(request: Request, exc: HTTPException) -> JSONResponse:
    # Routing errors (unknown path, wrong method) name the route they refer to.
    route = f"{request.method} {request.url.path}"
    return _http_failure(exc, route).response()


class InternalErrorBoundary:
    """Answers an unexpected exception with a 500 and logs it, once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            # Once the status line is out, the only thing left to do is end it.
            if not started:
                await failure_of(exc).response()(scope, receive, send)


def install_error_boundary(app: FastAPI) -> None:
    known = (
        ApiError,
        RequestValidationError,
        InvalidRequestError,
        QueueFullError,
        EngineStoppedError,
        RequestTimeoutError,
    )
    for exc_type in known:
        app.add_exception_handler(exc_type, _handle_known)
    app.add_exception_handler(HTTPException, _handle_http)
    app.add_middleware(InternalErrorBoundary)


def stream_error_data(exc: Exception) -> str:
    """The error body sent as an SSE event when a stream fails after it began."""
    failure = failure_of(exc)
    if failure.detail.code == INTERNAL_ERROR:
        # No handler or middleware will see this one: the response is under way.
        logger.error("error after the response began", exc_info=exc)
    return ErrorResponse(error=failure.detail).model_dump_json()
