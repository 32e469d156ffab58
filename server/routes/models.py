"""``GET /v1/models`` and ``GET /v1/models/{id}``: the one model served."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.schemas.model_list import ModelCard, ModelList
from server.served_model import ServedModel

router = APIRouter()


def _served(request: Request) -> ServedModel:
    return request.app.state.served_model


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    served: ServedModel | None = request.app.state.served_model
    # Empty while the model loads: the port answers before the model is ready.
    return ModelList(data=[] if served is None else [served.card])


# ":path" because hub-style ids contain a slash ("org/name").
@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    served = _served(request)
    served.require(model_id)
    return served.card
