"""Messages, tools and tool history through chat templates, tiny and real."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from server.exceptions import InvalidMessages
from server.prompt import encode_messages
from server.schemas.chat_request import ChatCompletionRequest
from server.tool_prompt import has_native_tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
HISTORY = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "21 C"},
]
# Renders every field a tools-aware template reads, on one line per turn.
TOOLS_TEMPLATE = (
    "{% for t in tools or [] %}TOOL {{ t.function.name }}\n{% endfor %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %} CALL {{ c.id }} {{ c.function.name }}"
    "({{ c.function.arguments.city }}){% endfor %}"
    "{% if m.role == 'tool' %} [{{ m.tool_call_id }} {{ m.name or '?' }}]"
    "{% endif %}{{ '\\n' }}{% endfor %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ m.role }}: {{ m.content }}\n{% endfor %}"
)

Render = Callable[..., str]


@pytest.fixture
def render(smollm2_tokenizer: PreTrainedTokenizerBase) -> Render:
    """Renders a request's messages with a template (SmolLM2's by default)."""

    def rendered(messages: list[dict[str, Any]], template: str | None = None,
                 **fields: Any) -> str:  # fmt: skip
        tokenizer = smollm2_tokenizer
        if template is not None:
            tokenizer = copy.deepcopy(smollm2_tokenizer)
            tokenizer.chat_template = template
        body = {"model": "m", "messages": messages, **fields}
        request = ChatCompletionRequest.model_validate(body)
        ids = encode_messages(
            request.messages, tokenizer, request.offered_tools, request.tool_choice
        )
        return tokenizer.decode(ids)

    return rendered


def test_system_for_a_template_without_it_joins_the_first_user_turn(
    render: Render,
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]

    assert render(messages, NO_SYSTEM_TEMPLATE) == "user: Be brief.\n\nHi\n"


def test_developer_for_a_template_without_system_joins_the_user_turn(
    render: Render,
) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]

    assert render(messages, NO_SYSTEM_TEMPLATE) == "user: Be brief.\n\nHi\n"


def test_template_refusal_unrelated_to_system_is_invalid_messages(
    render: Render,
) -> None:
    template = "{{ raise_exception('Only user turns') }}"

    with pytest.raises(InvalidMessages, match="Only user turns"):
        render([{"role": "system", "content": "x"}], template)


def test_text_parts_are_joined(render: Render) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]

    assert render([{"role": "user", "content": parts}], NO_SYSTEM_TEMPLATE) == (
        "user: Hello\nthere\n"
    )


def test_template_reading_tools_is_native(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = TOOLS_TEMPLATE

    assert has_native_tools(tokenizer)
    assert not has_native_tools(smollm2_tokenizer)


def test_native_template_gets_tools_calls_and_results(render: Render) -> None:
    text = render(HISTORY, TOOLS_TEMPLATE, tools=[WEATHER])

    assert text == (
        "TOOL get_weather\n"
        "user: Weather in Paris and Rome?\n"
        "assistant:  CALL call_1 get_weather(Paris)\n"
        "tool: 18 C [call_1 get_weather]\n"
        "tool: 21 C [call_2 ?]\n"
    )


def test_template_without_tools_gets_an_instructions_block(render: Render) -> None:
    text = render([{"role": "user", "content": "Hi"}], tools=[WEATHER])

    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n")
    assert '"name": "get_weather"' in system
    assert "<tool_call>" in system


def test_instructions_follow_the_clients_system_text(render: Render) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]

    text = render(messages, tools=[WEATHER])

    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou can call")


def test_named_choice_is_stated_in_the_instructions(render: Render) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}

    text = render([{"role": "user", "content": "Hi"}], tools=[WEATHER],
                  tool_choice=choice)  # fmt: skip

    assert "You must call the function get_weather." in text


def test_tool_choice_none_offers_no_tools(render: Render) -> None:
    messages = [{"role": "user", "content": "Hi"}]

    assert render(messages, tools=[WEATHER], tool_choice="none") == render(messages)


def test_history_without_native_tools_is_written_as_text(render: Render) -> None:
    text = render(HISTORY, NO_SYSTEM_TEMPLATE)

    assert text == (
        "user: Weather in Paris and Rome?\n"
        'assistant: <tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_call>\n'
        "user: <tool_response>\n18 C\n</tool_response>\n"
        "<tool_response>\n21 C\n</tool_response>\n"
    )
