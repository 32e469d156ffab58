"""Constrained decoding through llguidance: grammars compiled, logits masked.

llguidance was chosen over xgrammar and outlines-core because it needs no
other package (xgrammar pulls in triton on Linux), builds its token tables
from a local Hugging Face tokenizer offline (outlines-core's vocabulary loader
asks the hub), compiles a JSON schema in milliseconds without building a whole
automaton up front, and takes Lark grammars that embed JSON schemas, which is
how a tool call is written below.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from engine.constraint import ConstraintFactory
from engine.errors import InvalidRequestError

logger = logging.getLogger(__name__)

# One canonical layout: a small model left free to choose whitespace can loop
# on it forever; this is the layout of json.dumps, which models know best.
JSON_LAYOUT: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    # Keywords llguidance does not implement (uniqueItems, if/then) are left
    # unenforced rather than refused; a malformed schema is still an error.
    "lenient": True,
}
_REASON_CHARS = 200  # of a decoding failure's reason, for the client


class GrammarError(ValueError):
    """A grammar the library cannot compile; the message says why."""


def json_schema_grammar(schema: dict[str, Any]) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)


def lark_grammar(lark: str) -> str:
    return llguidance.LLMatcher.grammar_from_lark(lark)


def json_schema_error(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` cannot constrain an answer, or None if it can."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        json_schema_grammar(schema)
    )
    if is_error:
        return messages[0]
    if messages:
        logger.debug("schema accepted with warnings: %s", messages)
    return None


def embedded_json(schema: dict[str, Any]) -> str:
    """A JSON schema as a Lark ``%json`` rule body, laid out like the rest."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_LAYOUT})


@dataclass(frozen=True)
class GrammarCompiler:
    """Compiles grammars for one tokenizer; its tables are built once."""

    tokenizer: llguidance.LLTokenizer

    @classmethod
    def of(
        cls, tokenizer: PreTrainedTokenizerBase, stop_token_ids: frozenset[int]
    ) -> GrammarCompiler:
        return cls(_llg_tokenizer(tokenizer, tuple(sorted(stop_token_ids))))

    def factory(
        self, grammar: str, param: str = "response_format"
    ) -> ConstraintFactory:
        """Compiles now (raising ``GrammarError``); each call copies the result.

        ``param`` is the request field the grammar came from, named by the
        error if the grammar fails while the answer is being generated.
        """
        compiled = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if compiled.is_error():
            raise GrammarError(compiled.get_error())
        vocab_size = self.tokenizer.vocab_size
        # Some grammars compile and fail as soon as a first token is asked for
        # (a schema that is only a reference to itself): asking now makes that
        # a 400, before a stream's headers are out, not an error event after.
        first = compiled.deep_copy()
        llguidance.numpy.fill_next_token_bitmask(first, _bitmask(vocab_size))
        if first.is_error():
            raise GrammarError(_failure_reason(first))
        return lambda: GrammarConstraint(compiled.deep_copy(), vocab_size, param)


@lru_cache(maxsize=4)
def _llg_tokenizer(
    tokenizer: PreTrainedTokenizerBase, stop_token_ids: tuple[int, ...]
) -> llguidance.LLTokenizer:
    # About a second for a 50k vocabulary, hence the cache. Every stop token
    # counts as an end of text, so any of them may close a finished grammar.
    logger.info("building grammar tables for the tokenizer")
    return llguidance.hf.from_tokenizer(tokenizer, eos_token=list(stop_token_ids))


class GrammarConstraint:
    """One sequence's grammar state, driven by the engine's worker."""

    def __init__(
        self, matcher: llguidance.LLMatcher, vocab_size: int, param: str
    ) -> None:
        self._matcher = matcher
        self._param = param
        self._bitmask = _bitmask(vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        self._raise_if_failed()
        allowed = allowed_tokens(self._bitmask[0], logits.shape[-1])
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def accept(self, token_id: int) -> None:
        self._matcher.consume_token(token_id)
        self._raise_if_failed()

    @property
    def is_finished(self) -> bool:
        return self._matcher.is_stopped()

    def _raise_if_failed(self) -> None:
        # A grammar can compile and still fail on the way, e.g. when a
        # recursive schema outgrows the parser's limits: the request's fault,
        # so a 400 naming its field (or an error event, once streaming).
        if self._matcher.is_error():
            raise InvalidRequestError(
                f"{self._param} cannot be enforced: constrained decoding failed: "
                f"{_failure_reason(self._matcher)}",
                self._param,
            )


def _failure_reason(matcher: llguidance.LLMatcher) -> str:
    # llguidance's message goes on with its parser's state: only its first
    # line says what went wrong.
    lines = matcher.get_error().splitlines() or ["no reason given"]
    return lines[0][:_REASON_CHARS]


def _bitmask(vocab_size: int) -> np.ndarray:
    return llguidance.numpy.allocate_token_bitmask(1, vocab_size)


def allowed_tokens(bitmask: np.ndarray, vocab_size: int) -> torch.Tensor:
    """A bool row [vocab_size] from llguidance's packed bits (token i: bit i).

    Logits wider than the tokenizer (embeddings padded to a round size) get
    their extra entries forbidden: no text stands behind them.
    """
    bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little")
    allowed = np.zeros(vocab_size, dtype=bool)
    width = min(vocab_size, bits.size)
    allowed[:width] = bits[:width]
    return torch.from_numpy(allowed)
