"""Exceptions the engine raises; the server's error boundary maps each to HTTP."""

from __future__ import annotations


class LayerstreamError(Exception):
    """Base of every error layerstream raises on purpose."""


class ModelFileError(LayerstreamError):
    """A model file is missing, truncated or not what it claims to be."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsupportedModelError(LayerstreamError):
    """The checkpoint is readable but its architecture or format is not served."""


class InvalidRequestError(LayerstreamError):
    """A request the engine cannot run as given; ``param`` names the culprit."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class QueueFullError(LayerstreamError):
    """The admission queue is at its limit; the caller should retry later."""


class RequestTimeoutError(LayerstreamError):
    """The request outlived its deadline; the engine dropped it."""


class EngineStoppedError(LayerstreamError):
    """The engine no longer accepts requests (shutting down or crashed)."""
