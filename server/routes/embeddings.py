"""``POST /v1/embeddings``: a vector per input, computed in the engine's sweeps."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from server.access_log import RequestRecord
from server.choices import Tally
from server.disconnect import unless_gone
from server.embedding import (
    collect_vectors,
    embedding_list,
    embedding_requests,
    new_embedding_id,
)
from server.embedding_input import embedding_inputs, refuse_unservable
from server.generation import ChoiceStreams
from server.schemas.embeddings import EmbeddingList, EmbeddingsRequest
from server.served_model import ServedModel

logger = logging.getLogger(__name__)

router = APIRouter()


@router.post("/v1/embeddings", response_model=None)
async def create_embeddings(
    body: EmbeddingsRequest, request: Request
) -> EmbeddingList | Response:
    """A vector per input: its mean final hidden state, at unit length.

    The mean is taken over the input's tokens, of the hidden states after the
    model's final norm. A decoder language model has no trained pooling, so
    the plain mean is the choice here; the vectors are usable for similarity,
    but are not those of a model trained for embeddings. ``dimensions`` keeps
    the first components and scales them to unit length again.
    """
    served: ServedModel = request.app.state.served_model
    served.require(body.model)
    if body.ignored_fields:
        logger.debug("ignoring unsupported fields %s", body.ignored_fields)

    engine = request.app.state.engine
    refuse_unservable(body, engine.hidden_size, engine.options.max_queue)
    inputs = await run_in_threadpool(
        embedding_inputs, body, engine.tokenizer, engine.context_length
    )
    # All inputs queue at once, so the worker runs them in the same sweeps.
    request_id = new_embedding_id()
    streams = ChoiceStreams.submit(engine, embedding_requests(request_id, inputs))

    prompt_tokens = sum(len(ids) for ids in inputs)
    tally = Tally(RequestRecord(request_id, prompt_tokens=prompt_tokens))
    request.state.record = tally.record
    vectors = await unless_gone(
        request, collect_vectors(streams, tally), streams, tally
    )
    if isinstance(vectors, Response):
        return vectors
    return embedding_list(vectors, body, served.id, prompt_tokens)
