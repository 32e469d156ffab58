"""The body of ``POST /v1/embeddings`` and its answer; input validation lives here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from server.schemas.body import RequestBody
from server.schemas.completion_request import is_token_ids

_INPUT_SHAPES = (
    "a string, an array of strings, an array of token ids or an array of arrays "
    "of token ids"
)


class EmbeddingsRequest(RequestBody):
    # As for the other routes: fields this server does not use are ignored.
    model_config = ConfigDict(extra="allow")

    model: str
    # Every form arrives here as a list of inputs, each a text or token ids.
    input: list[str] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None  # accepted; nothing is done with it

    @field_validator("input", mode="before")
    @classmethod
    def _as_input_list(cls, given: Any) -> Any:
        if isinstance(given, str) or (given and is_token_ids(given)):
            given = [given]
        if not isinstance(given, list):
            raise ValueError(f"input must be {_INPUT_SHAPES}")
        # An empty text has no token to average; nor has an empty list of ids.
        if not given or any(item in ("", []) for item in given):
            raise ValueError("input must not be empty nor hold an empty item")
        is_texts = all(isinstance(item, str) for item in given)
        if not is_texts and not all(is_token_ids(item) for item in given):
            raise ValueError(f"input must be {_INPUT_SHAPES}")
        return given

    @property
    def is_base64(self) -> bool:
        return self.encoding_format == "base64"

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # Floats, or with encoding_format "base64" their little-endian float32 bytes.
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
