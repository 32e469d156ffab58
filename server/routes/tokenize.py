"""``POST /tokenize`` and ``POST /detokenize``: the served model's tokenizer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from transformers import PreTrainedTokenizerBase

from server.prompt import encode_messages, refuse_unknown_tokens
from server.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.served_model import ServedModel

router = APIRouter()


def _tokenizer(request: Request, model: str | None) -> PreTrainedTokenizerBase:
    served: ServedModel = request.app.state.served_model
    if model is not None:
        served.require(model)
    return request.app.state.engine.tokenizer


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    tokenizer = _tokenizer(request, body.model)
    # A long text takes a while to tokenize; keep the loop free.
    ids = await run_in_threadpool(_encode, body, tokenizer)
    context_length = request.app.state.engine.context_length
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=context_length)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    tokenizer = _tokenizer(request, body.model)
    refuse_unknown_tokens(body.tokens, tokenizer, "tokens")
    return DetokenizeResponse(prompt=tokenizer.decode(body.tokens))


def _encode(body: TokenizeRequest, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    if body.messages is not None:
        # Exactly the ids a chat completion of these messages would start from.
        return encode_messages(body.messages, tokenizer)
    add_special = body.add_special_tokens is not False
    return tokenizer(body.prompt, add_special_tokens=add_special)["input_ids"]
