"""Engine events turned into a chat completion, whole or as a chunk stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from engine.request import Event, FinishEvent, TokenEvent, TokenLogprob
from server.choices import ChoiceOutput, Tally
from server.generation import ChoiceStreams
from server.logprobs import TokenPieces, chat_logprobs
from server.reply import Reply, split_whole, tool_call
from server.schemas.chat_response import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    FunctionCallDelta,
    ToolCallDelta,
    Usage,
)
from server.schemas.logprobs import ChoiceLogprobs
from server.sse import SseEvent, relay
from server.tool_calls import Piece


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ChunkWriter:
    """Stamps every piece of one completion with the same id, time and model."""

    completion_id: str
    model: str
    pieces: TokenPieces
    include_usage: bool = False
    wants_logprobs: bool = False
    tool_names: frozenset[str] = frozenset()  # calls to parse out of the text
    created: int = field(default_factory=lambda: int(time.time()))

    def choice(
        self,
        index: int,
        delta: Delta,
        finish_reason: FinishReason | None = None,
        logprobs: Sequence[TokenLogprob] = (),
    ) -> SseEvent:
        choice = ChunkChoice(
            index=index,
            delta=delta,
            logprobs=chat_logprobs(logprobs, self.pieces) if logprobs else None,
            finish_reason=finish_reason,
        )
        return self._event(self._chunk([choice]))

    def usage(self, usage: Usage) -> SseEvent:
        return self._event(self._chunk([], usage))

    def completion(self, outputs: list[ChoiceOutput], usage: Usage) -> ChatCompletion:
        return ChatCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=[self._whole(i, output) for i, output in enumerate(outputs)],
            usage=usage,
        )

    def _whole(self, index: int, output: ChoiceOutput) -> Choice:
        reply = Reply(self.tool_names)
        content, calls = split_whole(output.text, reply)
        return Choice(
            index=index,
            message=AssistantMessage(content=content, tool_calls=calls or None),
            logprobs=self._logprobs(output.logprobs),
            finish_reason=reply.finish_reason(output.finish_reason),
        )

    def _logprobs(self, entries: list[TokenLogprob]) -> ChoiceLogprobs | None:
        return chat_logprobs(entries, self.pieces) if self.wants_logprobs else None

    def _chunk(
        self, choices: list[ChunkChoice], usage: Usage | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )

    def _event(self, chunk: ChatCompletionChunk) -> SseEvent:
        # With include_usage every chunk carries "usage" (null until the last);
        # without it, the key is absent.
        exclude = None if self.include_usage else {"usage"}
        return {"data": chunk.model_dump_json(exclude=exclude)}


class ChoiceChunks:
    """Each choice's reply as it streams: calls split off, logprobs carried.

    Text the splitter holds back (a call may be starting) delays its tokens'
    logprobs too; they go out with the choice's next chunk, so none are lost.
    """

    def __init__(self, writer: ChunkWriter, num_choices: int) -> None:
        self._writer = writer
        self._replies = [Reply(writer.tool_names) for _ in range(num_choices)]
        self._held: list[list[TokenLogprob]] = [[] for _ in range(num_choices)]

    def chunks_for(self, index: int, event: Event) -> list[SseEvent]:
        reply = self._replies[index]
        match event:
            case TokenEvent(text=text, logprobs=logprobs):
                self._held[index].extend(logprobs)
                return self._piece_chunks(index, reply.feed(text))
            case FinishEvent(reason=reason):
                rest = self._piece_chunks(index, reply.finish())
                reason = reply.finish_reason(reason)
                finish = self._writer.choice(index, Delta(), reason, self._take(index))
                return [*rest, finish]
        return []

    def _piece_chunks(self, index: int, pieces: list[Piece]) -> list[SseEvent]:
        reply = self._replies[index]
        return [
            self._writer.choice(index, _delta(piece, reply), logprobs=self._take(index))
            for piece in pieces
        ]

    def _take(self, index: int) -> list[TokenLogprob]:
        held, self._held[index] = self._held[index], []
        return held


def _delta(piece: Piece, reply: Reply) -> Delta:
    if isinstance(piece, str):
        return Delta(content=piece)
    # A call goes out whole, once parsed: one item with all its fields.
    call = tool_call(piece)
    function = FunctionCallDelta(
        name=call.function.name, arguments=call.function.arguments
    )
    item = ToolCallDelta(
        index=reply.next_call_index(), id=call.id, type="function", function=function
    )
    return Delta(tool_calls=[item])


def stream_events(
    streams: ChoiceStreams, writer: ChunkWriter, tally: Tally
) -> AsyncIterator[SseEvent]:
    """SSE events of a streamed chat completion.

    Each choice opens with its role chunk and closes with its finish chunk;
    the usage of all choices, if asked for, comes after the last of them.
    """
    roles = [
        writer.choice(index, Delta(role="assistant", content=""))
        for index in range(streams.num_choices)
    ]
    chunks = ChoiceChunks(writer, streams.num_choices)
    usage_for = writer.usage if writer.include_usage else None
    return relay(streams, tally, roles, chunks.chunks_for, usage_for)
