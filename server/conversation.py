"""Request messages turned into the list of dicts a chat template renders.

With a template that knows tools, assistant tool calls and tool results pass
through in the shape Hugging Face templates take. Without one, calls are
written into the assistant's text in the ``<tool_call>`` format and results
become user turns, since such templates (Gemma's among them) refuse other roles.
"""

from __future__ import annotations

from typing import Any

from server.schemas.chat_request import Message
from server.tool_calls import format_call

TemplateMessage = dict[str, Any]


def template_messages(
    messages: list[Message], native_tools: bool
) -> list[TemplateMessage]:
    if native_tools:
        call_names = _call_names(messages)
        return [_native_turn(message, call_names) for message in messages]
    converted: list[TemplateMessage] = []
    for previous, message in zip([None, *messages], messages, strict=False):
        turn = _plain_turn(message)
        # Several results in a row become one user turn: templates that take
        # only user and assistant turns insist that they alternate.
        if message.role == "tool" and previous is not None and previous.role == "tool":
            converted[-1]["content"] += "\n" + turn["content"]
        else:
            converted.append(turn)
    return converted


def _native_turn(message: Message, call_names: dict[str, str]) -> TemplateMessage:
    turn = _plain_role_turn(message)
    if message.tool_calls:
        turn["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                # Templates index into the arguments, so they get them parsed.
                "function": {
                    "name": call.function.name,
                    "arguments": call.function.parsed_arguments,
                },
            }
            for call in message.tool_calls
        ]
    if message.role == "tool":
        turn["tool_call_id"] = message.tool_call_id
        name = message.name or call_names.get(message.tool_call_id or "")
        if name is not None:
            turn["name"] = name
    return turn


def _plain_turn(message: Message) -> TemplateMessage:
    if message.role == "tool":
        result = f"<tool_response>\n{message.text}\n</tool_response>"
        return {"role": "user", "content": result}
    turn = _plain_role_turn(message)
    if message.tool_calls:
        calls = [
            format_call(call.function.name, call.function.parsed_arguments)
            for call in message.tool_calls
        ]
        turn["content"] = "\n".join(filter(None, [turn["content"], *calls]))
    return turn


def _plain_role_turn(message: Message) -> TemplateMessage:
    # Chat templates predate the "developer" role, which means what "system" did.
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.text}


def _call_names(messages: list[Message]) -> dict[str, str]:
    """Function name of every earlier call, by id: some templates want it."""
    return {
        call.id: call.function.name
        for message in messages
        for call in message.tool_calls or []
    }


def merge_system_into_user(
    conversation: list[TemplateMessage],
) -> list[TemplateMessage]:
    """System text moved to the start of the first user turn.

    For templates that refuse a system role: the instructions still reach the
    model, in the one turn every template accepts.
    """
    system = [turn["content"] for turn in conversation if turn["role"] == "system"]
    rest = [dict(turn) for turn in conversation if turn["role"] != "system"]
    first_user = next((turn for turn in rest if turn["role"] == "user"), None)
    if first_user is None:
        return [{"role": "user", "content": "\n\n".join(system)}, *rest]
    first_user["content"] = "\n\n".join([*system, first_user["content"]])
    return rest


def with_system_block(
    conversation: list[TemplateMessage], block: str
) -> list[TemplateMessage]:
    """``block`` added to the leading system turn, or as one if there is none."""
    if conversation and conversation[0]["role"] == "system":
        first = conversation[0]
        merged = {**first, "content": f"{first['content']}\n\n{block}"}
        return [merged, *conversation[1:]]
    return [{"role": "system", "content": block}, *conversation]
