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

from server.schemas.response_format import ResponseFormat
from server.schemas.sampling import MAX_TOP_LOGPROBS, SamplingFields
from server.schemas.tools import Tool, ToolCall, ToolChoice

Role = Literal["system", "developer", "user", "assistant", "tool"]


# Parts a text-only model cannot read; named so the refusal can say what came.
MEDIA_PARTS = frozenset({"image_url", "input_audio", "image", "audio", "file"})


class TextPart(BaseModel):
    type: Literal["text"]
    text: str

    @field_validator("type", mode="before")
    @classmethod
    def _text_only(cls, kind: Any) -> Any:
        if kind in MEDIA_PARTS:
            raise ValueError(
                f"{kind} parts are not supported: the served model reads text only"
            )
        return kind


class Message(BaseModel):
    role: Role
    # A plain string arrives here already wrapped as one text part, so the rest
    # of the server sees a single shape.
    content: list[TextPart] | None = Field(default=None, validate_default=True)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns only
    tool_call_id: str | None = None  # tool turns: the call answered

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
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        # As OpenAI: alternatives are only listed beside the tokens' own logprobs.
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true")
        return top

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(
        cls, choice: ToolChoice | None, info: ValidationInfo
    ) -> ToolChoice | None:
        names = [tool.function.name for tool in info.data.get("tools") or []]
        if choice in ("required", None, "none", "auto"):
            if choice == "required" and not names:
                raise ValueError("'required' needs at least one tool in tools")
            return choice
        if choice.function.name not in names:
            raise ValueError(f"no tool named {choice.function.name!r} in tools")
        return choice

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion cap asked for; the newer field wins over the older one."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        """Alternatives to list per token, or None when no logprobs are wanted."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def offered_tools(self) -> list[Tool]:
        """The tools the model may call: none at all with tool_choice "none"."""
        return [] if self.tool_choice == "none" else list(self.tools or [])
