"""``POST /v1/completions``: text in, text out, whole or streamed."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from server.access_log import RequestRecord
from server.choices import Tally, choice_requests, collect, refuse_over_queue
from server.disconnect import unless_gone
from server.generation import ChoiceStreams
from server.logprobs import pieces_of
from server.schemas.completion_request import CompletionRequest
from server.schemas.completion_response import TextCompletion
from server.served_model import ServedModel
from server.text_completion import (
    TextWriter,
    new_text_completion_id,
    stream_text_events,
)
from server.text_prompt import build_text_prompts, echo_texts

logger = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request
) -> TextCompletion | Response:
    served: ServedModel = request.app.state.served_model
    served.require(body.model)
    if body.ignored_fields:
        logger.debug("ignoring unsupported fields %s", body.ignored_fields)

    engine = request.app.state.engine
    param = "n" if len(body.prompt) == 1 else "prompt"
    refuse_over_queue(len(body.prompt) * body.n, engine.options.max_queue, param)
    prompts = await run_in_threadpool(
        build_text_prompts, body, engine.tokenizer, engine.context_length
    )
    writer = TextWriter(
        new_text_completion_id(),
        served.id,
        pieces_of(engine.tokenizer),
        _echoes(body, engine.tokenizer),
        body.include_usage,
        wants_logprobs=body.logprobs is not None,
    )
    # Each prompt has its own cap: the room its own length leaves.
    choices = [
        (prompt.ids, body.sampling_params(prompt.max_tokens, body.logprobs))
        for prompt in prompts
    ]
    requests = choice_requests(writer.completion_id, choices, body.n)
    streams = ChoiceStreams.submit(engine, requests)

    prompt_tokens = sum(len(prompt.ids) for prompt in prompts)
    tally = Tally(RequestRecord(writer.completion_id, prompt_tokens=prompt_tokens))
    request.state.record = tally.record
    if body.is_streamed:
        events = stream_text_events(streams, writer, tally)
        return EventSourceResponse(events, sep="\n")
    outputs = await unless_gone(request, collect(streams, tally), streams, tally)
    if isinstance(outputs, Response):
        return outputs
    return writer.completion(outputs, tally.usage)


def _echoes(body: CompletionRequest, tokenizer) -> list[str]:
    """Per choice, the prompt text it repeats first; all empty without echo."""
    texts = echo_texts(body, tokenizer) if body.echo else [""] * len(body.prompt)
    return [text for text in texts for _ in range(body.n)]
