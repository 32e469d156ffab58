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
from server.schemas.tools import Tool
from server.tool_calls import CLOSE, OPEN


def output_grammar(request: ChatCompletionRequest) -> str | None:
    """llguidance grammar for the answer; None leaves the model free."""
    forced = forced_tools(request)
    if forced:
        is_parallel = len(forced) > 1 and request.parallel_tool_calls is not False
        return tool_call_grammar(forced, is_parallel)
    answer_format = request.response_format
    if answer_format is None or answer_format.type == "text":
        return None
    if answer_format.json_schema is not None and answer_format.type == "json_schema":
        return json_schema_grammar(answer_format.json_schema.json_schema)
    return json_schema_grammar({"type": "object"})


def forced_tools(request: ChatCompletionRequest) -> list[Tool]:
    """The tools one of which must be called; empty when calling is optional."""
    choice, tools = request.tool_choice, request.offered_tools
    if choice == "required":
        return tools
    if choice is None or isinstance(choice, str):
        return []
    return [tool for tool in tools if tool.function.name == choice.function.name]


def tool_call_grammar(tools: list[Tool], is_parallel: bool) -> str:
    """One call (or up to one per tool, one after another) to one of ``tools``.

    Parallel calls are bounded: a grammar that always allows one more call
    lets a small model write calls until it runs out of tokens.
    """
    more = f'("\\n" call){{0,{len(tools) - 1}}}'
    calls = f"call {more}" if is_parallel else "call"
    opening, closing = json.dumps(OPEN + "\n"), json.dumps("\n" + CLOSE)
    rules = [
        f"start: {calls}",
        f"call: {opening} body {closing}",
        f"body: {embedded_json(_any_call_schema(tools))}",
    ]
    return lark_grammar("\n".join(rules))


def _any_call_schema(tools: list[Tool]) -> dict[str, Any]:
    schemas = [_call_schema(tool) for tool in tools]
    root = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    # Parameters refer to their definitions from their own root ("#/$defs/X",
    # as pydantic writes them); that root is now this one, so they move here.
    for section in ("$defs", "definitions"):
        found = {
            name: schema
            for tool in tools
            for name, schema in tool.function.parameters_schema.get(section, {}).items()
        }
        if found:
            root[section] = found
    return root


def _call_schema(tool: Tool) -> dict[str, Any]:
    # Properties in this order, so the name is written before the arguments.
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": closed_object(tool.function.parameters_schema),
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
    param = _grammar_param(request)
    try:
        return compiler.factory(grammar, param)
    except GrammarError as error:
        raise UnenforceableOutput(param, str(error)) from error


def _grammar_param(request: ChatCompletionRequest) -> str:
    """The field a failing grammar came from, as the client wrote it."""
    if forced_tools(request):
        return "tool_choice"
    answer_format = request.response_format
    if answer_format is not None and answer_format.type == "json_schema":
        return "response_format.json_schema.schema"
    return "response_format"


def closed_object(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without room for properties it does not declare.

    JSON Schema allows undeclared properties unless told otherwise, and a small
    model given that room invents parameters until it runs out of tokens.
    """
    if "properties" not in schema or "additionalProperties" in schema:
        return schema
    return {**schema, "additionalProperties": False}
