"""Tool calls in the model's text: the format written, and the parsing back.

A call is written as ``<tool_call>`` + a JSON object with ``name`` and
``arguments`` + ``</tool_call>``: the format of the Qwen and Hermes chat
templates, which the fallback instructions and the forcing grammar use too.
A reply that is nothing but such an object (or a list of them) counts as well,
as Llama 3 templates ask for that form.

``ToolCallSplitter`` separates calls from plain text as the text arrives, so a
stream never shows a call's text as content; the non-streamed answer runs the
same splitter over the whole text, so both modes agree.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as text


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def format_call(name: str, arguments: Any) -> str:
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}\n{call}\n{CLOSE}"


def parse_calls(text: str, names: frozenset[str]) -> list[ParsedCall] | None:
    """The calls a JSON text holds (an object or a list), or None if not calls."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call_of(item, names) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _call_of(item: Any, names: frozenset[str]) -> ParsedCall | None:
    if not isinstance(item, dict) or item.get("name") not in names:
        return None
    # Llama 3 templates ask for "parameters"; the others say "arguments".
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(item["name"], json.dumps(arguments, ensure_ascii=False))


Piece = str | ParsedCall


@dataclass
class ToolCallSplitter:
    """Splits generated text into content and calls, as the text arrives.

    Text that might still become a call is held back: a tail that could begin
    ``<tool_call>``, a block not yet closed, and a reply that opens with ``{``
    or ``[`` (possibly a bare call) until it ends. Trailing whitespace waits
    too, and is dropped if a call follows. Text that turns out not to be a
    valid call is released as content: nothing the model wrote is lost.
    """

    names: frozenset[str]
    num_calls: int = 0
    _pending: str = ""
    _in_block: bool = False
    _has_content: bool = False
    _pieces: list[Piece] = field(default_factory=list)

    def feed(self, text: str) -> list[Piece]:
        self._pending += text
        while self._step():
            pass
        return self._take()

    def finish(self) -> list[Piece]:
        """Everything still held, once the text is complete."""
        if self._in_block:
            self._block_ended(self._pending, closed=False)
        elif self._could_be_bare_call():
            calls = parse_calls(self._pending, self.names)
            self._calls_or_content(calls, self._pending)
        elif self._pending.strip() or not self.num_calls:
            self._content(self._pending)
        self._pending = ""
        return self._take()

    def _step(self) -> bool:
        """Consumes what can be decided now; True if the next step may do more."""
        if self._in_block:
            end = self._pending.find(CLOSE)
            if end < 0:
                return False
            self._block_ended(self._pending[:end], closed=True)
            self._pending = self._pending[end + len(CLOSE) :]
            return True
        start = self._pending.find(OPEN)
        if start >= 0:
            self._content_before_call(self._pending[:start])
            self._pending = self._pending[start + len(OPEN) :]
            self._in_block = True
            return True
        if not self._could_be_bare_call():
            self._release_safe_text()
        return False

    def _could_be_bare_call(self) -> bool:
        head = self._pending.lstrip()[:1]
        return not self._has_content and not self.num_calls and head in ("{", "[")

    def _release_safe_text(self) -> None:
        # Trailing whitespace waits too: before a call it is dropped.
        held = _open_prefix_length(self._pending)
        ready = self._pending[: len(self._pending) - held].rstrip()
        self._content(ready)
        self._pending = self._pending[len(ready) :]

    def _content_before_call(self, text: str) -> None:
        self._content(text.rstrip())

    def _block_ended(self, body: str, closed: bool) -> None:
        calls = parse_calls(body.strip(), self.names)
        raw = OPEN + body + (CLOSE if closed else "")
        self._in_block = False
        self._calls_or_content(calls, raw)

    def _calls_or_content(self, calls: list[ParsedCall] | None, raw: str) -> None:
        if calls is None:
            self._content(raw)
            return
        self.num_calls += len(calls)
        self._pieces.extend(calls)

    def _content(self, text: str) -> None:
        if text:
            self._has_content = True
            self._pieces.append(text)

    def _take(self) -> list[Piece]:
        pieces, self._pieces = self._pieces, []
        return pieces


def _open_prefix_length(text: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of OPEN."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0
