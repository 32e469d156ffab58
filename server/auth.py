"""Optional API keys: with any configured, every route but the probes needs one."""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import send_failure
from server.exceptions import InvalidApiKey
from server.settings import Settings, SettingsError

# Orchestrators and scrapers reach these without a key, and so does the chat
# page, which holds no data and asks for the key itself on its first 401.
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/"})
_BEARER = "bearer "


def api_keys_of(settings: Settings) -> tuple[bytes, ...]:
    keys = [key.get_secret_value() for key in settings.api_keys]
    if settings.api_key_file is not None:
        keys += _read_key_file(settings.api_key_file)
    return tuple(key.encode() for key in keys if key)


def _read_key_file(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        # Serving openly because a key file came out empty would be a surprise.
        raise SettingsError(f"api_key_file {path} holds no keys")
    return keys


def is_known_key(given: bytes, keys: tuple[bytes, ...]) -> bool:
    # Every key is compared, each in constant time, so timing tells nothing.
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


class ApiKeyCheck:
    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._is_free(scope):
            await self.app(scope, receive, send)
            return
        given = _bearer_token(scope)
        if given is None or not is_known_key(given, self.keys):
            await send_failure(InvalidApiKey(is_missing=given is None), scope, send)
            return
        await self.app(scope, receive, send)

    def _is_free(self, scope: Scope) -> bool:
        return not self.keys or scope["type"] != "http" or scope["path"] in OPEN_PATHS


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization" and value[: len(_BEARER)].lower() == b"bearer ":
            return value[len(_BEARER) :].strip()
    return None
