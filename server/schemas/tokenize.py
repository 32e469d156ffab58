"""Bodies of ``POST /tokenize`` and ``POST /detokenize`` and their answers."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from server.schemas.body import RequestBody
from server.schemas.chat_request import Message


class TokenizeRequest(RequestBody):
    """Either a text, or chat messages templated as for a chat completion."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(
        default=None, min_length=1, validate_default=True
    )
    # For a text; default true. Messages get what their template writes.
    add_special_tokens: StrictBool | None = None

    @field_validator("messages")
    @classmethod
    def _prompt_or_messages(
        cls, messages: list[Message] | None, info: ValidationInfo
    ) -> list[Message] | None:
        has_prompt = info.data.get("prompt") is not None
        if has_prompt == (messages is not None):
            raise ValueError("give either a prompt or messages, not both or neither")
        return messages

    @field_validator("add_special_tokens")
    @classmethod
    def _for_a_prompt(cls, add: bool | None, info: ValidationInfo) -> bool | None:
        if add and info.data.get("messages") is not None:
            raise ValueError(
                "applies to a prompt; the chat template writes the special tokens "
                "of messages itself"
            )
        return add


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(RequestBody):
    model: str | None = None
    tokens: list[StrictInt]


class DetokenizeResponse(BaseModel):
    prompt: str
