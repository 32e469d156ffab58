"""From a completion request's prompts (texts or token ids) to engine prompts."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from server.prompt import (
    Prompt,
    fit_prompt,
    refuse_certainly_too_long,
    refuse_unknown_tokens,
)
from server.schemas.completion_request import CompletionRequest

PARAM = "prompt"


def build_text_prompts(
    request: CompletionRequest,
    tokenizer: PreTrainedTokenizerBase,
    context_length: int,
) -> list[Prompt]:
    """Each prompt's token ids and completion cap, in the request's order."""
    return [
        fit_prompt(
            _token_ids(prompt, tokenizer, context_length),
            request.requested_max_tokens,
            context_length,
            PARAM,
        )
        for prompt in request.prompt
    ]


def _token_ids(
    prompt: str | list[int], tokenizer: PreTrainedTokenizerBase, context_length: int
) -> list[int]:
    if isinstance(prompt, list):
        # Before anything decodes them (echo does): the tokenizer fails on a
        # negative id with an overflow rather than a message.
        refuse_unknown_tokens(prompt, tokenizer, PARAM)
        return prompt
    refuse_certainly_too_long(len(prompt), tokenizer, context_length, PARAM)
    # With the tokenizer's own special tokens (a BOS for most), as a text is
    # tokenized for the model everywhere else.
    return tokenizer(prompt)["input_ids"]


def echo_texts(
    request: CompletionRequest, tokenizer: PreTrainedTokenizerBase
) -> list[str]:
    """What ``echo`` repeats of each prompt: a text as sent, token ids decoded."""
    return [
        prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
        for prompt in request.prompt
    ]
