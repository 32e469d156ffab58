"""``GET /stats``: what the engine is doing, as JSON (not an OpenAI route)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    engine = request.app.state.engine
    return {
        "running": engine.num_running,
        "waiting": engine.num_waiting,
        "preempted": engine.num_preempted,
        "totals": asdict(engine.totals),
        "residency": engine.plan,
    }
