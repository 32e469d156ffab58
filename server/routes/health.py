"""``GET /health``: the HTTP side is up and the engine's worker is running."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> JSONResponse:
    # Orchestrators restart on a failing probe; a dead worker can serve nothing.
    if not request.app.state.engine.is_alive:
        return JSONResponse({"status": "engine stopped"}, status_code=503)
    return JSONResponse({"status": "ok"})
