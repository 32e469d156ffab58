"""An answer's text as it arrives, sorted into content and tool calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.schemas.chat_response import FinishReason
from server.schemas.tools import FunctionCall, ToolCall
from server.tool_calls import ParsedCall, Piece, ToolCallSplitter, new_call_id


@dataclass
class Reply:
    """Without tool names every piece is content; with them calls are split off."""

    tool_names: frozenset[str] = frozenset()
    _splitter: ToolCallSplitter | None = field(init=False, default=None)
    _num_indexed: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.tool_names:
            self._splitter = ToolCallSplitter(self.tool_names)

    def feed(self, text: str) -> list[Piece]:
        if self._splitter is None:
            return [text] if text else []
        return self._splitter.feed(text)

    def finish(self) -> list[Piece]:
        return [] if self._splitter is None else self._splitter.finish()

    def next_call_index(self) -> int:
        """Index of the next call sent: streamed calls are told apart by it."""
        self._num_indexed += 1
        return self._num_indexed - 1

    def finish_reason(self, engine_reason: FinishReason) -> FinishReason:
        """The engine's reason, or "tool_calls" for an answer ending in calls."""
        has_calls = self._splitter is not None and self._splitter.num_calls > 0
        return "tool_calls" if has_calls and engine_reason == "stop" else engine_reason


def tool_call(call: ParsedCall) -> ToolCall:
    function = FunctionCall(name=call.name, arguments=call.arguments)
    return ToolCall(id=new_call_id(), function=function)


def split_whole(text: str, reply: Reply) -> tuple[str | None, list[ToolCall]]:
    """Content (None if only calls were made) and calls of a complete answer."""
    pieces = reply.feed(text) + reply.finish()
    calls = [tool_call(piece) for piece in pieces if isinstance(piece, ParsedCall)]
    content = "".join(piece for piece in pieces if isinstance(piece, str))
    return (None if calls and not content else content), calls
