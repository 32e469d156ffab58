"""llguidance behind the engine's constraint seam, on SmolLM2's tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from engine.errors import InvalidRequestError
from server.grammar import (
    GrammarCompiler,
    GrammarError,
    allowed_tokens,
    json_schema_error,
    json_schema_grammar,
    lark_grammar,
)
from server.output_constraint import tool_call_grammar
from server.schemas.tools import Tool

STOP = 2  # SmolLM2's <|im_end|>
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture
def compiler(smollm2_tokenizer: PreTrainedTokenizerBase) -> GrammarCompiler:
    return GrammarCompiler.of(smollm2_tokenizer, frozenset({STOP}))


def _allowed(constraint, vocab: int) -> set[int]:
    row = constraint.mask(torch.zeros(vocab))
    return set(torch.nonzero(row == 0).flatten().tolist())


def _feed(constraint, ids: list[int], vocab: int) -> None:
    for token in ids:
        assert token in _allowed(constraint, vocab)
        constraint.accept(token)


def test_packed_bits_unpack_to_the_tokens_they_name() -> None:
    bitmask = np.array([0b101, 1 << 31, 0b1], dtype=np.uint32).view(np.int32)

    allowed = allowed_tokens(bitmask, 70)

    assert torch.nonzero(allowed).flatten().tolist() == [0, 2, 63, 64]


def test_logits_wider_than_the_tokenizer_forbid_the_extra_ids() -> None:
    bitmask = np.full(2, -1, dtype=np.int32)  # 64 tokens, all allowed

    allowed = allowed_tokens(bitmask, 80)

    assert allowed[:64].all() and not allowed[64:].any()


def test_json_answer_must_open_with_a_brace(
    compiler: GrammarCompiler, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    vocab = len(smollm2_tokenizer)
    constraint = compiler.factory(json_schema_grammar({"type": "object"}))()

    texts = {smollm2_tokenizer.decode([token]) for token in _allowed(constraint, vocab)}

    assert texts and all(text.startswith("{") for text in texts)


def test_schema_answer_finishes_after_its_closing_brace(
    compiler: GrammarCompiler, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    vocab = len(smollm2_tokenizer)
    constraint = compiler.factory(json_schema_grammar(PERSON))()
    ids = smollm2_tokenizer.encode('{"name": "Ada", "age": 36}')

    _feed(constraint, ids, vocab)

    assert constraint.is_finished


def test_parallel_calls_end_after_one_call_per_tool(
    compiler: GrammarCompiler, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    vocab = len(smollm2_tokenizer)
    tools = [
        Tool.model_validate({"type": "function", "function": {"name": name}})
        for name in ("a", "b")
    ]
    constraint = compiler.factory(tool_call_grammar(tools, is_parallel=True))()
    call = '<tool_call>\n{{"name": "{}", "arguments": {{}}}}\n</tool_call>'
    text = "\n".join(call.format(name) for name in ("a", "a"))

    _feed(constraint, smollm2_tokenizer.encode(text), vocab)

    assert constraint.is_finished  # no third call, however the model would go on


def test_stop_token_is_forbidden_until_the_answer_is_whole(
    compiler: GrammarCompiler, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    vocab = len(smollm2_tokenizer)
    constraint = compiler.factory(lark_grammar('start: "a" | "a\\n" "b"'))()

    before = _allowed(constraint, vocab)
    _feed(constraint, smollm2_tokenizer.encode("a"), vocab)

    assert STOP not in before
    assert STOP in _allowed(constraint, vocab)


def test_each_factory_call_starts_a_fresh_state(
    compiler: GrammarCompiler, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    vocab = len(smollm2_tokenizer)
    factory = compiler.factory(json_schema_grammar(PERSON))
    first = factory()
    _feed(first, smollm2_tokenizer.encode('{"name": "Ada", "age": 36}'), vocab)

    second = factory()

    assert first.is_finished and not second.is_finished


def test_token_outside_the_grammar_is_the_request_fault(
    compiler: GrammarCompiler, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    constraint = compiler.factory(json_schema_grammar(PERSON), "tool_choice")()

    with pytest.raises(InvalidRequestError) as raised:
        constraint.accept(smollm2_tokenizer.encode("hello")[0])

    assert raised.value.param == "tool_choice"


def test_schema_that_outgrows_the_parser_while_generating_names_its_field(
    compiler: GrammarCompiler, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    # Compiles, then fails on the first token: an object that must hold itself.
    node = {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}
    schema = {"$defs": {"n": {**node, "required": ["c"]}}, "$ref": "#/$defs/n"}
    constraint = compiler.factory(json_schema_grammar(schema))()

    with pytest.raises(InvalidRequestError) as raised:
        _feed(
            constraint, smollm2_tokenizer.encode('{"c": {"c": '), len(smollm2_tokenizer)
        )

    assert raised.value.param == "response_format"
    assert "\n" not in str(raised.value)  # the reason, not the parser's state


def test_schema_failing_at_its_first_token_is_refused_when_compiled(
    compiler: GrammarCompiler,
) -> None:
    # Only a reference to itself: nothing can start it. Refused before the
    # request is queued, so a stream gets a 400 instead of an error event.
    with pytest.raises(GrammarError) as raised:
        compiler.factory(json_schema_grammar({"$ref": "#"}))

    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nonsense"},
        {"type": "object", "properties": 5},
        {"type": "object", "required": "name"},
        {"type": "string", "pattern": "(["},
        {"$ref": "#/$defs/missing"},
    ],
)
def test_invalid_schema_is_reported(schema: dict) -> None:
    assert json_schema_error(schema)


def test_schema_with_unenforced_keywords_is_accepted() -> None:
    # uniqueItems is valid JSON Schema that llguidance does not implement.
    assert json_schema_error({"type": "array", "uniqueItems": True}) is None
