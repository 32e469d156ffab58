"""Tools a request offers, which one it asks for, and the calls made."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

from server.schemas.response_format import checked_schema

# OpenAI's rule; it also keeps quotes and markup out of the tool prompt.
TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None

    @field_validator("parameters")
    @classmethod
    def _enforceable(cls, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        if parameters is None:
            return None
        # Arguments are a JSON object, as with OpenAI: a call with any other
        # kind of arguments could never be parsed.
        kind = parameters.get("type", "object")
        if kind != "object":
            raise ValueError(
                f"parameters must be a JSON Schema of type object, not {kind!r}"
            )
        return checked_schema(parameters)

    @property
    def parameters_schema(self) -> dict[str, Any]:
        # OpenAI reads a function without parameters as one taking none.
        if not self.parameters:
            return {"type": "object", "properties": {}}
        return {"type": "object", **self.parameters}


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text

    @field_validator("arguments", mode="before")
    @classmethod
    def _object_as_text(cls, arguments: Any) -> Any:
        # Some clients send the arguments back parsed; the API's type is text.
        return json.dumps(arguments) if isinstance(arguments, dict) else arguments

    @property
    def parsed_arguments(self) -> Any:
        """The arguments as JSON values, or the text when it is not JSON."""
        try:
            return json.loads(self.arguments)
        except json.JSONDecodeError:
            return self.arguments


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall
