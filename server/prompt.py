"""From chat messages to the prompt token ids and completion budget of a request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from server.conversation import (
    TemplateMessage,
    merge_system_into_user,
    template_messages,
    with_system_block,
)
from server.exceptions import (
    ContextLengthExceeded,
    EmptyPrompt,
    InvalidMessages,
    NoChatTemplate,
    UnknownTokens,
)
from server.schemas.chat_request import ChatCompletionRequest, Message
from server.schemas.tools import Tool, ToolChoice
from server.tool_prompt import has_native_tools, tool_instructions, tools_for_template

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    max_tokens: int  # completion cap, already fitted into the context


def build_prompt(
    request: ChatCompletionRequest,
    tokenizer: PreTrainedTokenizerBase,
    context_length: int,
) -> Prompt:
    characters = sum(len(message.text) for message in request.messages)
    refuse_certainly_too_long(characters, tokenizer, context_length, "messages")
    ids = encode_messages(
        request.messages, tokenizer, request.offered_tools, request.tool_choice
    )
    return fit_prompt(ids, request.requested_max_tokens, context_length, "messages")


def fit_prompt(
    ids: list[int], requested: int | None, context_length: int, param: str
) -> Prompt:
    """The prompt with its completion cap, refused if nothing fits after it."""
    if not ids:
        raise EmptyPrompt(param)
    # At least one position must stay free for the first generated token.
    if len(ids) >= context_length:
        raise ContextLengthExceeded(len(ids), context_length, param=param)
    room = context_length - len(ids)
    return Prompt(ids, completion_budget(requested, room))


def completion_budget(requested: int | None, room: int) -> int:
    """The requested cap clipped to the room left; all of it when none asked."""
    return room if requested is None else min(requested, room)


def refuse_certainly_too_long(
    characters: int,
    tokenizer: PreTrainedTokenizerBase,
    context_length: int,
    param: str,
    has_completion: bool = True,
) -> None:
    """Refuses, without tokenizing, text that cannot fit whatever its tokens.

    Tokenizing megabytes takes seconds of CPU; but no token covers more
    characters than the vocabulary's longest entry, which bounds the count from
    below. (A normalizer that deletes characters could break the bound; the
    tokenizers served here do not.) Text that is not completed (an embedding's
    input) may fill the whole context.
    """
    at_least = characters // _longest_token_length(tokenizer)
    room = context_length - 1 if has_completion else context_length
    if at_least > room:
        raise ContextLengthExceeded(
            at_least, context_length, True, param, has_completion
        )


def refuse_unknown_tokens(
    token_ids: list[int], tokenizer: PreTrainedTokenizerBase, param: str
) -> None:
    """Refuses an id the tokenizer cannot decode, naming its place."""
    vocab_size = len(tokenizer)
    for position, token_id in enumerate(token_ids):
        if not 0 <= token_id < vocab_size:
            raise UnknownTokens(param, position, token_id, vocab_size)


@lru_cache(maxsize=4)
def _longest_token_length(tokenizer: PreTrainedTokenizerBase) -> int:
    return max(len(token) for token in tokenizer.get_vocab())


def encode_messages(
    messages: list[Message],
    tokenizer: PreTrainedTokenizerBase,
    tools: list[Tool] | None = None,
    tool_choice: ToolChoice | None = None,
) -> list[int]:
    if not tokenizer.chat_template:
        raise NoChatTemplate()
    native = has_native_tools(tokenizer)
    conversation = template_messages(messages, native)
    options: dict[str, Any] = {}
    if tools and native:
        options["tools"] = tools_for_template(tools)
    elif tools:
        block = tool_instructions(tools, tool_choice)
        conversation = with_system_block(conversation, block)
    return _render(conversation, tokenizer, options)


def _render(
    conversation: list[TemplateMessage],
    tokenizer: PreTrainedTokenizerBase,
    options: dict[str, Any],
) -> list[int]:
    """Token ids of the templated conversation, ready for the reply."""
    try:
        return _apply_template(conversation, tokenizer, options)
    except TemplateError as exc:
        # Templates reject what they cannot render (a role, an order of turns)
        # by raising; that is the client's input, not a server fault.
        if not any(turn["role"] == "system" for turn in conversation):
            raise InvalidMessages(str(exc)) from exc
        refusal = exc
    # Many templates (Gemma 2, Mistral's older ones) refuse a system turn.
    logger.debug("chat template refused the messages; merging system into user")
    try:
        return _apply_template(merge_system_into_user(conversation), tokenizer, options)
    except TemplateError:
        raise InvalidMessages(str(refusal)) from refusal


def _apply_template(
    conversation: list[TemplateMessage],
    tokenizer: PreTrainedTokenizerBase,
    options: dict[str, Any],
) -> list[int]:
    ids = tokenizer.apply_chat_template(
        conversation,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        **options,
    )
    return list(ids)
