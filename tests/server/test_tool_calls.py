"""Tool calls split from generated text, whole or as the text arrives."""

from __future__ import annotations

import json

import pytest

from server.tool_calls import ParsedCall, Piece, ToolCallSplitter, format_call

NAMES = frozenset({"get_weather", "get_time"})
PARIS = format_call("get_weather", {"city": "Paris"})
PARIS_CALL = ParsedCall("get_weather", json.dumps({"city": "Paris"}))


def split(chunks: list[str]) -> list[Piece]:
    splitter = ToolCallSplitter(NAMES)
    pieces = [piece for chunk in chunks for piece in splitter.feed(chunk)]
    return _joined(pieces + splitter.finish())


def _joined(pieces: list[Piece]) -> list[Piece]:
    """Adjacent text pieces as one, so chunkings can be compared."""
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and out and isinstance(out[-1], str):
            out[-1] += piece
        else:
            out.append(piece)
    return out


def by_char(text: str) -> list[str]:
    return list(text)


def test_tagged_call_becomes_a_call() -> None:
    assert split([PARIS]) == [PARIS_CALL]


def test_text_before_a_call_stays_content_without_trailing_space() -> None:
    assert split(["Let me check.\n" + PARIS]) == ["Let me check.", PARIS_CALL]


def test_two_calls_in_a_row_become_two_calls() -> None:
    text = PARIS + "\n" + format_call("get_time", {})

    assert split([text]) == [PARIS_CALL, ParsedCall("get_time", "{}")]


def test_plain_text_passes_through() -> None:
    assert split(["The sky is blue. "]) == ["The sky is blue. "]


@pytest.mark.parametrize(
    "text",
    [
        "Let me check.\n" + PARIS + "\nDone.",
        PARIS + "\n" + format_call("get_time", {}),
        "<tool and a half",
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"answer": 42}',
        "  leading space, then " + PARIS,
    ],
)
def test_streamed_char_by_char_equals_whole(text: str) -> None:
    assert split(by_char(text)) == split([text])


def test_call_text_never_arrives_as_content_while_streaming() -> None:
    splitter = ToolCallSplitter(NAMES)

    streamed = [piece for char in PARIS for piece in splitter.feed(char)]

    assert streamed == [PARIS_CALL]


def test_content_is_released_before_the_text_ends() -> None:
    splitter = ToolCallSplitter(NAMES)

    assert splitter.feed("Hello there") == ["Hello there"]


def test_bare_json_call_counts_as_a_call() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'

    assert split([text]) == [PARIS_CALL]


def test_json_that_is_not_a_call_is_content() -> None:
    assert split(['{"answer": 42}']) == ['{"answer": 42}']


def test_call_of_an_unknown_tool_is_content() -> None:
    text = format_call("launch_rocket", {})

    assert split([text]) == [text]


def test_block_with_broken_json_is_content() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {\n</tool_call>'

    assert split([text]) == [text]


def test_unclosed_block_at_the_end_is_content() -> None:
    text = '<tool_call>\n{"name": "get_weather", "argu'

    assert split([text]) == [text]


def test_arguments_given_as_text_are_parsed() -> None:
    arguments = json.dumps(json.dumps({"city": "Paris"}))
    text = f'<tool_call>{{"name": "get_weather", "arguments": {arguments}}}</tool_call>'

    assert split([text]) == [PARIS_CALL]
