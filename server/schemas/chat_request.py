"""The body of ``POST /v1/chat/completions``; all input validation lives here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from server.schemas.response_format import ResponseFormat
from server.schemas.tools import Tool, ToolCall, ToolChoice

Role = Literal["system", "developer", "user", "assistant", "tool"]

# torch seeds are 64-bit; OpenAI documents no range, so the signed one is taken.
SEED_RANGE = (-(2**63), 2**63 - 1)


def _encodable(text: str) -> str:
    # JSON may carry lone UTF-16 surrogates ("\ud83c"); no tokenizer can encode
    # them, so they are refused here rather than failing deep in the template.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text is not valid Unicode ({error.reason})") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


# Parts a text-only model cannot read; named so the refusal can say what came.
MEDIA_PARTS = frozenset({"image_url", "input_audio", "image", "audio", "file"})


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text

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


class StreamOptions(BaseModel):
    include_usage: bool = False


StopList = Annotated[list[Text], Field(max_length=4)]


class ChatCompletionRequest(BaseModel):
    # Fields of the OpenAI API this server does not use yet are accepted and
    # ignored, as clients send many of them by default.
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    # Strict: OpenAI refuses "3" or true for a count, and so does this server.
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: StrictInt | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: StopList | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: StrictInt = Field(default=1, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None

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

    @field_validator("stop", mode="before")
    @classmethod
    def _wrap_stop_string(cls, stop: Any) -> Any:
        return [stop] if isinstance(stop, str) else stop

    @field_validator("n")
    @classmethod
    def _single_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"n={n} is not supported; only one choice per request")
        return n

    @field_validator("n", mode="before")
    @classmethod
    def _null_n_is_one(cls, n: Any) -> Any:
        return 1 if n is None else n

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion cap asked for; the newer field wins over the older one."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def is_streamed(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def offered_tools(self) -> list[Tool]:
        """The tools the model may call: none at all with tool_choice "none"."""
        return [] if self.tool_choice == "none" else list(self.tools or [])

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})
