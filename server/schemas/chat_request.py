"""The body of ``POST /v1/chat/completions``; all input validation lives here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from server.schemas.sampling import MAX_TOP_LOGPROBS, SamplingFields, Text

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    role: Role
    # A plain string arrives here already wrapped as one text part, so the rest
    # of the server sees a single shape.
    content: list[TextPart] | None = Field(default=None, validate_default=True)

    @field_validator("content", mode="before")
    @classmethod
    def _wrap_string(cls, content: Any) -> Any:
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if content is not None and not isinstance(content, list):
            raise ValueError("content must be a string or an array of text parts")
        return content

    @field_validator("content")
    @classmethod
    def _required_unless_assistant(
        cls, content: list[TextPart] | None, info: ValidationInfo
    ) -> list[TextPart] | None:
        # An assistant turn may carry only tool calls; every other role speaks.
        role = info.data.get("role")
        if content is None and role != "assistant":
            raise ValueError(f"content is required for a {role} message")
        return content

    @property
    def text(self) -> str:
        return "\n".join(part.text for part in self.content or [])


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        # As OpenAI: alternatives are only listed beside the tokens' own logprobs.
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true")
        return top

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion cap asked for; the newer field wins over the older one."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        """Alternatives to list per token, or None when no logprobs are wanted."""
        return (self.top_logprobs or 0) if self.logprobs else None
