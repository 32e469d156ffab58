"""Engine events turned into a ``text_completion``, whole or as a chunk stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from engine.request import Event, FinishEvent, TokenEvent, TokenLogprob
from server.choices import ChoiceOutput, Tally
from server.generation import ChoiceStreams
from server.logprobs import LegacyLogprobs, TokenPieces
from server.schemas.chat_response import FinishReason, Usage
from server.schemas.completion_response import TextChoice, TextCompletion
from server.schemas.logprobs import CompletionLogprobs
from server.sse import SseEvent, relay


def new_text_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


@dataclass
class TextWriter:
    """Stamps every piece of one completion with the same id, time and model."""

    completion_id: str
    model: str
    pieces: TokenPieces
    echoes: list[str]  # per choice, the text repeated ahead of it ("": no echo)
    include_usage: bool = False
    wants_logprobs: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _logprobs: dict[int, LegacyLogprobs] = field(default_factory=dict)

    def completion(self, outputs: list[ChoiceOutput], usage: Usage) -> TextCompletion:
        choices = [
            TextChoice(
                text=self.echoes[index] + output.text,
                index=index,
                logprobs=self._lists(index, output.logprobs),
                finish_reason=output.finish_reason,
            )
            for index, output in enumerate(outputs)
        ]
        return self._object(choices, usage)

    def chunk_for(self, index: int, event: Event) -> list[SseEvent]:
        match event:
            case TokenEvent(text=text, logprobs=logprobs) if text or logprobs:
                return [self._chunk(index, text, self._lists(index, logprobs))]
            case FinishEvent(reason=reason):
                return [self._chunk(index, "", finish_reason=reason)]
        return []

    def echo_chunks(self) -> list[SseEvent]:
        return [
            self._chunk(index, echo) for index, echo in enumerate(self.echoes) if echo
        ]

    def usage(self, usage: Usage) -> SseEvent:
        return self._event(self._object([], usage))

    def _lists(
        self, index: int, entries: Sequence[TokenLogprob]
    ) -> CompletionLogprobs | None:
        if not self.wants_logprobs:
            return None
        # One builder per choice: a stream's text offsets run on across chunks.
        if index not in self._logprobs:
            start = len(self.echoes[index])
            self._logprobs[index] = LegacyLogprobs(self.pieces, start)
        return self._logprobs[index].next(entries)

    def _chunk(
        self,
        index: int,
        text: str,
        logprobs: CompletionLogprobs | None = None,
        finish_reason: FinishReason | None = None,
    ) -> SseEvent:
        choice = TextChoice(
            text=text, index=index, logprobs=logprobs, finish_reason=finish_reason
        )
        return self._event(self._object([choice]))

    def _object(
        self, choices: list[TextChoice], usage: Usage | None = None
    ) -> TextCompletion:
        return TextCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )

    def _event(self, chunk: TextCompletion) -> SseEvent:
        # As in chat: "usage" on every chunk with include_usage, else on none.
        exclude = None if self.include_usage else {"usage"}
        return {"data": chunk.model_dump_json(exclude=exclude)}


def stream_text_events(
    streams: ChoiceStreams, writer: TextWriter, tally: Tally
) -> AsyncIterator[SseEvent]:
    """SSE events of a streamed completion: echoes, text, a finish per choice."""
    usage_for = writer.usage if writer.include_usage else None
    return relay(streams, tally, writer.echo_chunks(), writer.chunk_for, usage_for)
