"""``response_format``: free text, any JSON object, or JSON following a schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from server.grammar import json_schema_error


def checked_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema itself, once the grammar library agrees it can enforce it."""
    error = json_schema_error(schema)
    if error is not None:
        raise ValueError(f"invalid JSON schema: {error}")
    return schema


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # "schema" would shadow a BaseModel attribute; the alias keeps the wire name.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    # Every schema is enforced in full, so strict changes nothing here.
    strict: StrictBool | None = None

    _check = field_validator("json_schema")(checked_schema)


class ResponseFormat(BaseModel):
    # One model rather than a tagged union, so that errors name the path a
    # client wrote (response_format.json_schema.schema) and nothing more.
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = Field(default=None, validate_default=True)

    @field_validator("json_schema")
    @classmethod
    def _given_for_json_schema(
        cls, spec: JsonSchemaSpec | None, info: ValidationInfo
    ) -> JsonSchemaSpec | None:
        if spec is None and info.data.get("type") == "json_schema":
            raise ValueError("required when type is 'json_schema'")
        return spec
