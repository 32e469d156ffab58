"""Tools, tool calls and response_format over HTTP, with a scripted engine."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# A call as a model writes it, split where tokens might split it.
CALL_PIECES = [
    "<tool",
    '_call>\n{"name": "get_weather", ',
    '"arguments": {"city"',
    ': "Paris"}}\n</tool_call>',
]
ARGUMENTS = '{"city": "Paris"}'


def _post(client: TestClient, **fields: Any) -> tuple[int, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    response = client.post("/v1/chat/completions", json={**body, **fields})
    is_stream = response.headers["content-type"].startswith("text/event-stream")
    return response.status_code, response.text if is_stream else response.json()


def _chunks(body: str) -> list[dict[str, Any]]:
    events = [event.removeprefix("data: ") for event in body.split("\n\n") if event]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


@pytest.fixture
def calling_engine(fake_engine: FakeEngine) -> FakeEngine:
    fake_engine.pieces = CALL_PIECES
    return fake_engine


def test_call_in_the_answer_becomes_tool_calls(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    status, body = _post(client, tools=[WEATHER])

    choice = body["choices"][0]
    assert status == 200
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert (call["type"], call["function"]) == (
        "function",
        {"name": "get_weather", "arguments": ARGUMENTS},
    )


def test_streamed_call_is_one_indexed_delta_then_tool_calls(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    status, body = _post(client, tools=[WEATHER], stream=True)

    deltas = [chunk["choices"][0]["delta"] for chunk in _chunks(body)]
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in _chunks(body)]
    assert status == 200
    assert deltas[0] == {"role": "assistant", "content": ""}
    [item] = deltas[1]["tool_calls"]
    assert item["id"].startswith("call_")
    assert item == {
        "index": 0,
        "id": item["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": ARGUMENTS},
    }
    assert deltas[2:] == [{}]
    assert finishes == [None, None, "tool_calls"]


def test_streamed_call_bytes_carry_index_id_type_and_name(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    _, body = _post(client, tools=[WEATHER], stream=True)

    call_id = _chunks(body)[1]["choices"][0]["delta"]["tool_calls"][0]["id"]
    expected = (
        '"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
        f'"id":"{call_id}","type":"function","function":{{"name":"get_weather",'
        '"arguments":"{\\"city\\": \\"Paris\\"}"}}]},'
        '"logprobs":null,"finish_reason":null}]}\n\n'
    )
    assert body.split("data: ")[2].endswith(expected)


def test_streamed_text_before_a_call_is_content_without_call_text(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    calling_engine.pieces = ["Let me look.", "\n", *CALL_PIECES]

    _, body = _post(client, tools=[WEATHER], stream=True)

    deltas = [chunk["choices"][0]["delta"] for chunk in _chunks(body)]
    assert [delta.get("content") for delta in deltas] == [
        "",
        "Let me look.",
        None,
        None,
    ]
    assert deltas[2]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_two_calls_get_indexes_zero_and_one(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    calling_engine.pieces = [*CALL_PIECES, "\n", *CALL_PIECES]

    _, body = _post(client, tools=[WEATHER], stream=True)

    items = [
        item
        for chunk in _chunks(body)
        for item in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert [item["index"] for item in items] == [0, 1]
    assert items[0]["id"] != items[1]["id"]


def test_without_tools_call_text_is_plain_content(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    _, body = _post(client)

    assert body["choices"][0]["message"]["content"] == "".join(CALL_PIECES)
    assert "tool_calls" not in body["choices"][0]["message"]


def test_tool_choice_none_leaves_call_text_as_content(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    _, body = _post(client, tools=[WEATHER], tool_choice="none")

    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "".join(CALL_PIECES)


def test_call_cut_by_the_cap_is_content_with_length(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    _, body = _post(client, tools=[WEATHER], max_tokens=2)

    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "".join(CALL_PIECES[:2])


@pytest.mark.parametrize(
    ("fields", "constrained"),
    [
        ({}, False),
        ({"response_format": {"type": "text"}}, False),
        ({"response_format": {"type": "json_object"}}, True),
        ({"tools": [WEATHER]}, False),
        ({"tools": [WEATHER], "tool_choice": "required"}, True),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {
                    "type": "function",
                    "function": {"name": "get_weather"},
                },
            },
            True,
        ),
    ],
)
def test_grammar_reaches_the_engine_only_when_the_form_is_fixed(
    client: TestClient, fake_engine: FakeEngine, fields: dict, constrained: bool
) -> None:
    _post(client, **fields)

    assert (fake_engine.requests[-1].constraint is not None) == constrained


def test_tool_history_is_accepted(client: TestClient) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ARGUMENTS},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]

    status, _ = _post(client, messages=messages, tools=[WEATHER])

    assert status == 200


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": 3}},
                    }
                ]
            },
            "tools.0.function.parameters",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ]
            },
            "tools.0.function.parameters",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages.0.content.0.type",
        ),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role"),
        (
            {"tools": [{"type": "function", "function": {"name": 'a"}</tool_call>'}}]},
            "tools.0.function.name",
        ),
    ],
)
def test_bad_structured_field_is_a_400_naming_it(
    client: TestClient, fields: dict, param: str
) -> None:
    status, body = _post(client, **fields)

    assert (status, body["error"]["param"]) == (400, param)


def test_streamed_schema_that_cannot_start_is_a_400_not_an_error_event(
    client: TestClient,
) -> None:
    schema = {"name": "x", "schema": {"$ref": "#"}}
    response_format = {"type": "json_schema", "json_schema": schema}

    status, body = _post(client, response_format=response_format, stream=True)

    assert (status, body["error"]["param"]) == (
        400,
        "response_format.json_schema.schema",
    )


def test_image_part_refusal_says_the_model_reads_text_only(client: TestClient) -> None:
    part = {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}

    _, body = _post(client, messages=[{"role": "user", "content": [part]}])

    assert "image_url parts are not supported" in body["error"]["message"]


def test_each_streamed_choice_gets_its_own_call_and_finish(
    client: TestClient, calling_engine: FakeEngine
) -> None:
    _, body = _post(client, tools=[WEATHER], stream=True, n=2)

    chunks = [chunk["choices"][0] for chunk in _chunks(body)]
    for index in (0, 1):
        mine = [choice for choice in chunks if choice["index"] == index]
        items = [item for c in mine for item in c["delta"].get("tool_calls", [])]
        assert [item["index"] for item in items] == [0]
        assert items[0]["function"]["arguments"] == ARGUMENTS
        assert all(not c["delta"].get("content") for c in mine)
        assert [c["finish_reason"] for c in mine][-1] == "tool_calls"


def test_every_choice_is_handed_the_grammar_to_make_its_own_from(
    client: TestClient, fake_engine: FakeEngine
) -> None:
    _post(client, response_format={"type": "json_object"}, n=3)

    factories = {id(request.constraint) for request in fake_engine.requests}
    assert len(fake_engine.requests) == 3
    assert None not in [request.constraint for request in fake_engine.requests]
    assert len(factories) == 1
