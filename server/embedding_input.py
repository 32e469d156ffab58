"""From an embeddings request's inputs (texts or token ids) to engine prompts."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from server.choices import refuse_over_queue
from server.exceptions import (
    ContextLengthExceeded,
    EmptyPrompt,
    InvalidDimensions,
)
from server.prompt import refuse_certainly_too_long, refuse_unknown_tokens
from server.schemas.embeddings import EmbeddingsRequest

PARAM = "input"


def refuse_unservable(
    request: EmbeddingsRequest, hidden_size: int, max_queue: int
) -> None:
    """Refuses what depends on the model and the server, not on the body alone."""
    dimensions = request.dimensions
    if dimensions is not None and dimensions > hidden_size:
        raise InvalidDimensions(dimensions, hidden_size)
    # Each input waits in the queue as a request of its own.
    refuse_over_queue(len(request.input), max_queue, "input")


def embedding_inputs(
    request: EmbeddingsRequest,
    tokenizer: PreTrainedTokenizerBase,
    context_length: int,
) -> list[list[int]]:
    """Each input's token ids, in the request's order."""
    return [_token_ids(item, tokenizer, context_length) for item in request.input]


def _token_ids(
    item: str | list[int], tokenizer: PreTrainedTokenizerBase, context_length: int
) -> list[int]:
    if isinstance(item, list):
        refuse_unknown_tokens(item, tokenizer, PARAM)
        ids = item
    else:
        refuse_certainly_too_long(
            len(item), tokenizer, context_length, PARAM, has_completion=False
        )
        # With the tokenizer's special tokens, as a completion's text prompt.
        ids = tokenizer(item)["input_ids"]
    if not ids:
        raise EmptyPrompt(PARAM)
    # Nothing is generated after an input, so it may fill the whole context.
    if len(ids) > context_length:
        raise ContextLengthExceeded(
            len(ids), context_length, param=PARAM, has_completion=False
        )
    return ids
