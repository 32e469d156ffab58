"""Turn generated token ids into client-safe text, one token at a time.

Two things make text unsafe to send yet: a UTF-8 character whose bytes are
split over several tokens (the tokenizer decodes the missing part as U+FFFD),
and a tail that might still grow into a stop string. Both are held back here
until they resolve.

Decoding uses a sliding window of ids: ``_prefix_offset`` marks a few tokens
already sent, decoded again only as context so that spaces at the boundary come
out as in a whole-sequence decode; ``_read_offset`` marks the end of what has
been decoded successfully. Each push therefore decodes a handful of ids, not
the whole output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# What byte-level tokenizers put in place of an incomplete UTF-8 sequence.
REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool) -> str: ...


class TextStream:
    """Incremental decoder for one request's output, with stop strings."""

    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        # An empty stop string would match everywhere; the server should never
        # send one, and ignoring it is the only sensible reading.
        self._stops = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._held = ""  # decoded text that might start a stop string
        self._pieces: list[str] = []
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """True once a stop string has appeared; nothing more will be emitted."""
        return self._stopped

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._pieces)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text now safe to send (maybe "")."""
        if self._stopped:
            return ""
        self._ids.append(token_id)
        new_text = self._decode_new()
        return self._release(new_text) if new_text else ""

    def flush(self) -> str:
        """Return everything still held back, at the end of generation.

        A trailing incomplete UTF-8 character is emitted as the tokenizer decodes
        it (U+FFFD), so the stream always adds up to a whole-sequence decode.
        """
        if self._stopped:
            return ""
        rest = self._decode_window()[len(self._decode_context()) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        return self._release(rest, final=True)

    def _decode_context(self) -> str:
        return self._decode(self._ids[self._prefix_offset : self._read_offset])

    def _decode_window(self) -> str:
        return self._decode(self._ids[self._prefix_offset :])

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _decode_new(self) -> str:
        """Text added by the ids after the read offset, once it is whole."""
        context = self._decode_context()
        window = self._decode_window()
        if len(window) <= len(context) or window.endswith(REPLACEMENT_CHAR):
            # Nothing new (a skipped special token) or a character still split.
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return window[len(context) :]

    def _release(self, new_text: str, final: bool = False) -> str:
        """Emit ``new_text`` minus any tail that could begin a stop string."""
        pending = self._held + new_text
        cut = first_stop(pending, self._stops)
        if cut is not None:
            self._stopped = True
            self._held = ""
            return self._emit(pending[:cut])

        # At the end a stop prefix can no longer complete: it is plain text.
        held = 0 if final else stop_prefix_length(pending, self._stops)
        self._held = pending[len(pending) - held :]
        return self._emit(pending[: len(pending) - held])

    def _emit(self, text: str) -> str:
        if text:
            self._pieces.append(text)
        return text


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index of the earliest stop-string match in ``text``, if any."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest
