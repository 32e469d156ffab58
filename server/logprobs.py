"""The engine's token logprobs written as OpenAI's chat entries or legacy lists."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from engine.request import TokenLogprob
from server.schemas.logprobs import (
    ChoiceLogprobs,
    CompletionLogprobs,
    TokenLogprobEntry,
    TopLogprob,
)

# SentencePiece vocabularies spell a raw byte as "<0xE2>" and a space as "▁".
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE_MARK = "\u2581"


@dataclass(frozen=True)
class Piece:
    """One vocabulary entry as clients see it: its text and its exact bytes."""

    text: str
    data: bytes


class TokenPieces:
    """Token id -> piece, for one tokenizer; each id is worked out once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._special_ids = frozenset(tokenizer.all_special_ids)
        # Byte-level vocabularies (GPT-2 style) write every byte as a printable
        # character; the table turns those characters back into the bytes.
        table = {char: byte for byte, char in bytes_to_unicode().items()}
        self._byte_of = table if _is_byte_level(tokenizer) else None
        self.piece = lru_cache(maxsize=65536)(self._piece)

    def _piece(self, token_id: int) -> Piece:
        data = self._bytes(token_id)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # Part of a character: spelled out as OpenAI does for such tokens.
            text = "bytes:" + "".join(f"\\x{byte:02x}" for byte in data)
        return Piece(text, data)

    def _bytes(self, token_id: int) -> bytes:
        token = self._tokenizer.convert_ids_to_tokens(token_id)
        if token_id in self._special_ids:
            return token.encode("utf-8")
        if self._byte_of is not None and all(c in self._byte_of for c in token):
            return bytes(self._byte_of[c] for c in token)
        if match := _BYTE_TOKEN.fullmatch(token):
            return bytes([int(match.group(1), 16)])
        return token.replace(_SPACE_MARK, " ").encode("utf-8")


@lru_cache(maxsize=4)
def pieces_of(tokenizer: PreTrainedTokenizerBase) -> TokenPieces:
    """The served tokenizer's pieces, shared by every request."""
    return TokenPieces(tokenizer)


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder")
    return '"ByteLevel"' in json.dumps(decoder)


def chat_logprobs(
    entries: Sequence[TokenLogprob], pieces: TokenPieces
) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[_chat_entry(entry, pieces) for entry in entries])


def _chat_entry(entry: TokenLogprob, pieces: TokenPieces) -> TokenLogprobEntry:
    piece = pieces.piece(entry.token_id)
    top = [_top(token_id, logprob, pieces) for token_id, logprob in entry.top]
    return TokenLogprobEntry(
        token=piece.text,
        logprob=entry.logprob,
        bytes=list(piece.data),
        top_logprobs=top,
    )


def _top(token_id: int, logprob: float, pieces: TokenPieces) -> TopLogprob:
    piece = pieces.piece(token_id)
    return TopLogprob(token=piece.text, logprob=logprob, bytes=list(piece.data))


class LegacyLogprobs:
    """Builds one choice's legacy lists, chunk after chunk, offsets running on."""

    def __init__(self, pieces: TokenPieces, text_start: int) -> None:
        self._pieces = pieces
        self._text_start = text_start  # characters before the first token (echo)
        self._data = b""  # bytes of the tokens so far

    def next(self, entries: Sequence[TokenLogprob]) -> CompletionLogprobs:
        lists = CompletionLogprobs(
            tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[]
        )
        for entry in entries:
            piece = self._pieces.piece(entry.token_id)
            lists.tokens.append(piece.text)
            lists.token_logprobs.append(entry.logprob)
            lists.top_logprobs.append(self._top(entry))
            lists.text_offset.append(self._offset())
            self._data += piece.data
        return lists

    def _top(self, entry: TokenLogprob) -> dict[str, float]:
        # As OpenAI: the sampled token is listed too, so up to ``logprobs`` + 1.
        alternatives = [*entry.top, (entry.token_id, entry.logprob)]
        return {self._pieces.piece(i).text: logprob for i, logprob in alternatives}

    def _offset(self) -> int:
        # In characters: bytes of a character still split do not count yet.
        return self._text_start + len(self._data.decode("utf-8", errors="ignore"))
