"""What ``GET /v1/models`` and ``GET /v1/models/{id}`` return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "layerstream"
    context_length: int
    # Not in OpenAI's schema (clients ignore it): what stays resident, what streams.
    residency: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
