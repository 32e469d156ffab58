"""``POST /v1/chat/completions``: one request through the engine, whole or streamed."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from server.access_log import RequestRecord
from server.choices import Tally, choice_requests, collect, refuse_over_queue
from server.completion import ChunkWriter, new_completion_id, stream_events
from server.disconnect import unless_gone
from server.generation import ChoiceStreams
from server.logprobs import pieces_of
from server.output_constraint import output_constraint
from server.prompt import build_prompt
from server.schemas.chat_request import ChatCompletionRequest
from server.schemas.chat_response import ChatCompletion
from server.served_model import ServedModel

logger = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletion | Response:
    served: ServedModel = request.app.state.served_model
    served.require(body.model)
    if body.ignored_fields:
        logger.debug("ignoring unsupported fields %s", body.ignored_fields)

    engine = request.app.state.engine
    refuse_over_queue(body.n, engine.options.max_queue, "n")
    # Templating and tokenizing a long prompt takes a while; keep the loop free.
    prompt = await run_in_threadpool(
        build_prompt, body, engine.tokenizer, engine.context_length
    )
    constraint = await run_in_threadpool(
        output_constraint, body, engine.tokenizer, engine.stop_token_ids
    )
    logprobs = body.requested_logprobs
    writer = ChunkWriter(
        new_completion_id(),
        served.id,
        pieces_of(engine.tokenizer),
        body.include_usage,
        wants_logprobs=logprobs is not None,
        tool_names=frozenset(tool.function.name for tool in body.offered_tools),
    )
    params = body.sampling_params(prompt.max_tokens, logprobs)
    prompts = [(prompt.ids, params)]
    requests = choice_requests(writer.completion_id, prompts, body.n, constraint)
    streams = ChoiceStreams.submit(engine, requests)

    tally = Tally(RequestRecord(writer.completion_id, prompt_tokens=len(prompt.ids)))
    request.state.record = tally.record
    if body.is_streamed:
        # Headers go out at once: with layers streamed from disk the first token
        # can take long, and an open stream with pings keeps proxies waiting.
        events = stream_events(streams, writer, tally)
        return EventSourceResponse(events, sep="\n")
    outputs = await unless_gone(request, collect(streams, tally), streams, tally)
    if isinstance(outputs, Response):
        return outputs
    return writer.completion(outputs, tally.usage)
