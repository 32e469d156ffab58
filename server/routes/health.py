"""``GET /health`` (the process is alive) and ``GET /ready`` (it takes requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.lifecycle import Lifecycle, Phase

router = APIRouter()

# Loading a big model takes a while; probing every second is enough.
READY_RETRY_AFTER_S = 5


# HEAD answers as GET does (some load balancers probe with it); listed once in
# the schema so that its operation ids stay unique.
@router.head("/health", include_in_schema=False)
@router.get("/health")
async def health(request: Request) -> JSONResponse:
    # Orchestrators restart on a failing probe; a dead worker can serve nothing,
    # but a model still loading is alive and must not be restarted.
    engine = request.app.state.engine
    if engine is not None and not engine.is_alive:
        return JSONResponse({"status": "engine stopped"}, status_code=503)
    lifecycle: Lifecycle = request.app.state.lifecycle
    status = "ok" if lifecycle.phase is Phase.READY else lifecycle.phase.value
    return JSONResponse({"status": status})


@router.head("/ready", include_in_schema=False)
@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    lifecycle: Lifecycle = request.app.state.lifecycle
    engine = request.app.state.engine
    if lifecycle.phase is Phase.READY and engine.is_alive:
        return JSONResponse({"status": "ready"})
    is_stopped = engine is not None and not engine.is_alive
    status = "engine stopped" if is_stopped else lifecycle.phase.value
    headers = {"Retry-After": str(READY_RETRY_AFTER_S)}
    return JSONResponse({"status": status}, status_code=503, headers=headers)
