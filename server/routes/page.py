"""``GET /``: a one-file chat page, to try the server from a browser."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

# The page is inline HTML, CSS and script: it may fetch this server's API and
# nothing else, so it works offline and cannot leak a conversation.
_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)


@cache
def _page() -> str:
    return (files("server") / "static" / "chat.html").read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def chat_page() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Content-Security-Policy": _POLICY})
