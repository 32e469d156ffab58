"""``POST /v1/chat/completions``: one request through the engine, whole or streamed."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from engine.constraint import ConstraintFactory
from engine.request import GenerationRequest, SamplingParams
from server.access_log import RequestRecord
from server.completion import (
    ChunkWriter,
    collect,
    new_completion_id,
    stream_events,
)
from server.generation import EventStream
from server.output_constraint import output_constraint
from server.prompt import Prompt, build_prompt
from server.schemas.chat_request import ChatCompletionRequest
from server.schemas.chat_response import ChatCompletion
from server.served_model import ServedModel

logger = logging.getLogger(__name__)

router = APIRouter()

# Not a standard status: it marks, in the access log, a client that left early.
CLIENT_CLOSED_REQUEST = 499


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletion | Response:
    served: ServedModel = request.app.state.served_model
    served.require(body.model)
    if body.ignored_fields:
        logger.debug("ignoring unsupported fields %s", body.ignored_fields)

    engine = request.app.state.engine
    # Templating and tokenizing a long prompt takes a while; keep the loop free.
    prompt = await run_in_threadpool(
        build_prompt, body, engine.tokenizer, engine.context_length
    )
    constraint = await run_in_threadpool(
        output_constraint, body, engine.tokenizer, engine.stop_token_ids
    )
    tool_names = frozenset(tool.function.name for tool in body.offered_tools)
    writer = ChunkWriter(
        new_completion_id(), served.id, body.include_usage, tool_names=tool_names
    )
    generation = _generation_request(writer, body, prompt, constraint)
    stream = EventStream.submit(engine, generation)

    record = RequestRecord(writer.completion_id, prompt_tokens=len(prompt.ids))
    request.state.record = record
    if body.is_streamed:
        # Headers go out at once: with layers streamed from disk the first token
        # can take long, and an open stream with pings keeps proxies waiting.
        events = stream_events(stream, writer, record)
        return EventSourceResponse(events, sep="\n")
    return await _complete_unless_gone(request, stream, writer, record)


def _generation_request(
    writer: ChunkWriter,
    body: ChatCompletionRequest,
    prompt: Prompt,
    constraint: ConstraintFactory | None,
) -> GenerationRequest:
    params = SamplingParams(
        max_tokens=prompt.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=tuple(body.stop or ()),
    )
    return GenerationRequest(writer.completion_id, prompt.ids, params, constraint)


async def _complete_unless_gone(
    request: Request, stream: EventStream, writer: ChunkWriter, record: RequestRecord
) -> ChatCompletion | Response:
    collecting = asyncio.ensure_future(collect(stream, record))
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collecting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        # The client left, or the server is stopping: free the engine's place.
        is_abandoned = not collecting.done()
        if is_abandoned:
            collecting.cancel()
            stream.cancel()
    if is_abandoned:
        record.outcome = "cancelled"
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    text, finish = collecting.result()
    return writer.completion(text, finish)


async def _wait_for_disconnect(request: Request) -> None:
    # The body is already read, so the next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
