"""From chat messages to the prompt token ids and completion budget of a request."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from server.exceptions import (
    ContextLengthExceeded,
    EmptyPrompt,
    InvalidMessages,
    NoChatTemplate,
)
from server.schemas.chat_request import ChatCompletionRequest, Message


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
    ids = encode_messages(request.messages, tokenizer)
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
) -> None:
    """Refuses, without tokenizing, text that cannot fit whatever its tokens.

    Tokenizing megabytes takes seconds of CPU; but no token covers more
    characters than the vocabulary's longest entry, which bounds the count from
    below. (A normalizer that deletes characters could break the bound; the
    tokenizers served here do not.)
    """
    at_least = characters // _longest_token_length(tokenizer)
    if at_least >= context_length:
        raise ContextLengthExceeded(at_least, context_length, True, param)


@lru_cache(maxsize=4)
def _longest_token_length(tokenizer: PreTrainedTokenizerBase) -> int:
    return max(len(token) for token in tokenizer.get_vocab())


def encode_messages(
    messages: list[Message], tokenizer: PreTrainedTokenizerBase
) -> list[int]:
    if not tokenizer.chat_template:
        raise NoChatTemplate()
    conversation = [_template_message(message) for message in messages]
    try:
        ids = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except TemplateError as exc:
        # Templates reject what they cannot render (a role, an order of turns)
        # by raising; that is the client's input, not a server fault.
        raise InvalidMessages(str(exc)) from exc
    return list(ids)


def _template_message(message: Message) -> dict[str, str]:
    # Chat templates predate the "developer" role, which means what "system" did.
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.text}
