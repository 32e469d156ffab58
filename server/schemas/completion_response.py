"""What ``POST /v1/completions`` returns: one completion or a chunk stream."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from server.schemas.chat_response import FinishReason, Usage
from server.schemas.logprobs import CompletionLogprobs


class TextChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class TextCompletion(BaseModel):
    """A whole completion, or one chunk of a stream (OpenAI uses one shape)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[TextChoice]
    usage: Usage | None = None
