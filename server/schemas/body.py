"""What any request body must be before its fields are read: valid Unicode."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Location = tuple[str | int, ...]

_NOT_UNICODE = PydanticCustomError(
    "unicode_error", "text is not valid Unicode (it holds a lone surrogate)"
)


class RequestBody(BaseModel):
    """A request's JSON body: every string in it, keys too, is valid Unicode.

    JSON may carry lone UTF-16 surrogates ("\\ud83c"), which no tokenizer, chat
    template or grammar can take, wherever they sit (a message, a tool call's
    id, a schema's property name). One look at the whole body refuses them,
    naming the field, before any field is read.
    """

    @model_validator(mode="before")
    @classmethod
    def _refuse_lone_surrogates(cls, data: Any) -> Any:
        where = first_non_unicode(data)
        if where is not None:
            error = InitErrorDetails(type=_NOT_UNICODE, loc=where, input="")
            raise ValidationError.from_exception_data(cls.__name__, [error])
        return data


def first_non_unicode(data: Any) -> Location | None:
    """Where the first string that is not valid Unicode lies; None if none does.

    A bad key is reported at the object that holds it. The walk keeps its own
    stack: however deep the JSON nests, it cannot run out of recursion.
    """
    stack: list[tuple[Location, Any]] = [((), data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                return where
        elif isinstance(value, dict):
            if not all(_is_unicode(key) for key in value if isinstance(key, str)):
                return where
            # Reversed onto the stack, so that the body is walked in order.
            items = [((*where, key), item) for key, item in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            items = [((*where, index), item) for index, item in enumerate(value)]
            stack.extend(reversed(items))
    return None


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
