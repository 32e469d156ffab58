"""The grammar a chat request's answer must follow, if any.

A forced tool call (``tool_choice`` "required" or a named function) wins over
``response_format``: the answer is then calls, not content.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import PreTrainedTokenizerBase

from engine.constraint import ConstraintFactory
from server.exceptions import UnenforceableOutput
from server.grammar import (
    GrammarCompiler,
    GrammarError,
    embedded_json,
    json_schema_grammar,
    lark_grammar,
)
from server.schemas.chat_request import ChatCompletionRequest
from server.schemas.response_format import JsonObjectFormat, JsonSchemaFormat
from server.schemas.tools import Tool
from server.tool_calls import CLOSE, OPEN


def output_grammar(request: ChatCompletionRequest) -> str | None:
    """llguidance grammar for the answer; None leaves the model free."""
    forced = forced_tools(request)
    if forced:
        is_parallel = len(forced) > 1 and request.parallel_tool_calls is not False
        return tool_call_grammar(forced, is_parallel)
    match request.response_format:
        case JsonObjectFormat():
            return json_schema_grammar({"type": "object"})
        case JsonSchemaFormat(json_schema=spec):
            return json_schema_grammar(spec.json_schema)
    return None


def forced_tools(request: ChatCompletionRequest) -> list[Tool]:
    """The tools one of which must be called; empty when calling is optional."""
    choice, tools = request.tool_choice, request.offered_tools
    if choice == "required":
        return tools
    if choice is None or isinstance(choice, str):
        return []
    return [tool for tool in tools if tool.function.name == choice.function.name]


def tool_call_grammar(tools: list[Tool], is_parallel: bool) -> str:
    """One call (or several, one after another) to one of ``tools``."""
    calls = 'call ("\\n" call)*' if is_parallel else "call"
    opening, closing = json.dumps(OPEN + "\n"), json.dumps("\n" + CLOSE)
    rules = [
        f"start: {calls}",
        f"call: {opening} body {closing}",
        f"body: {embedded_json(_any_call_schema(tools))}",
    ]
    return lark_grammar("\n".join(rules))


def _any_call_schema(tools: list[Tool]) -> dict[str, Any]:
    schemas = [_call_schema(tool) for tool in tools]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _call_schema(tool: Tool) -> dict[str, Any]:
    # Properties in this order, so the name is written before the arguments.
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": tool.function.parameters_schema,
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def output_constraint(
    request: ChatCompletionRequest,
    tokenizer: PreTrainedTokenizerBase,
    stop_token_ids: frozenset[int],
) -> ConstraintFactory | None:
    """The compiled grammar of the answer, ready to hand to the engine."""
    grammar = output_grammar(request)
    if grammar is None:
        return None  # the common case builds no grammar tables at all
    compiler = GrammarCompiler.of(tokenizer, stop_token_ids)
    try:
        return compiler.factory(grammar)
    except GrammarError as error:
        param = "tool_choice" if forced_tools(request) else "response_format"
        raise UnenforceableOutput(param, str(error)) from error
