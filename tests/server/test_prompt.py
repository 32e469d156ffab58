"""Prompt building: template, room left in the context, completion cap."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from server.prompt import build_prompt, completion_budget
from server.schemas.chat_request import ChatCompletionRequest


def _request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields}
    )


def test_requested_cap_larger_than_the_room_is_clipped_to_it() -> None:
    assert completion_budget(requested=100, room=40) == 40


def test_requested_cap_within_the_room_is_kept() -> None:
    assert completion_budget(requested=10, room=40) == 10


def test_prompt_filling_all_but_one_position_leaves_one_token(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    prompt_length = len(build_prompt(_request(), smollm2_tokenizer, 1000).ids)

    prompt = build_prompt(_request(max_tokens=50), smollm2_tokenizer, prompt_length + 1)

    assert prompt.max_tokens == 1


def test_developer_messages_are_given_to_the_template_as_system(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    developer = {"role": "developer", "content": "Be brief."}
    system = {"role": "system", "content": "Be brief."}

    as_developer = build_prompt(_request(messages=[developer]), smollm2_tokenizer, 1000)
    as_system = build_prompt(_request(messages=[system]), smollm2_tokenizer, 1000)

    assert as_developer.ids == as_system.ids
