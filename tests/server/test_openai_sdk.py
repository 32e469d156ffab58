"""The official ``openai`` SDK against a live ``layerstream serve`` process.

One server, with the real default model, serves the whole session. Requests are
greedy and short so the file stays quick on a CPU; each request whose answer
several tests inspect is made once, by a module-scoped fixture.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from transformers import PreTrainedTokenizerBase

from tests.live_server import LiveServer

MODEL = "smollm2-135m-instruct"

QUESTION = [
    {"role": "user", "content": "What is the capital of France? Answer in one word."}
]
LONG_ANSWER = [{"role": "user", "content": "Tell me a long story about a dragon."}]
ALPHABET = [
    {
        "role": "user",
        "content": "Recite the alphabet in capital letters separated by spaces, "
        "like this: A B C D ...",
    }
]
STOP = "F G H"
# Enough tokens for a greedy answer to reach "F G H" ("A", " B", ... " H").
ALPHABET_MAX_TOKENS = 12
ANSWER_MAX_TOKENS = 20


@pytest.fixture(scope="module")
def server_port(live_server: LiveServer) -> int:
    return live_server.port


@pytest.fixture(scope="module")
def client(server_port: int) -> OpenAI:
    base_url = f"http://127.0.0.1:{server_port}/v1"
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def _complete(
    client: OpenAI, messages: list[dict[str, str]], **options: Any
) -> ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, **options
    )


def _stream(
    client: OpenAI, messages: list[dict[str, str]], **options: Any
) -> list[ChatCompletionChunk]:
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, stream=True, **options
    )
    return list(chunks)


def _content(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(
        chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices
    )


@pytest.fixture(scope="module")
def answer(client: OpenAI) -> ChatCompletion:
    return _complete(client, QUESTION, max_tokens=ANSWER_MAX_TOKENS)


@pytest.fixture(scope="module")
def streamed_answer(client: OpenAI) -> list[ChatCompletionChunk]:
    return _stream(client, QUESTION, max_tokens=ANSWER_MAX_TOKENS)


@pytest.fixture(scope="module")
def streamed_with_usage(client: OpenAI) -> list[ChatCompletionChunk]:
    usage = {"include_usage": True}
    return _stream(client, QUESTION, max_tokens=ANSWER_MAX_TOKENS, stream_options=usage)


@pytest.fixture(scope="module")
def alphabet(client: OpenAI) -> str:
    """The greedy answer without a stop string, which the stop tests cut."""
    reply = _complete(client, ALPHABET, max_tokens=ALPHABET_MAX_TOKENS)
    return reply.choices[0].message.content or ""


def test_answer_is_not_empty(answer: ChatCompletion) -> None:
    assert (answer.choices[0].message.content or "").strip()


def test_usage_adds_up(answer: ChatCompletion) -> None:
    usage = answer.usage
    assert usage is not None
    assert usage.prompt_tokens + usage.completion_tokens == usage.total_tokens


def test_prompt_tokens_count_the_templated_messages(
    answer: ChatCompletion, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    ids = smollm2_tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False
    )

    assert answer.usage is not None
    assert answer.usage.prompt_tokens == len(ids)


def test_natural_end_finishes_with_stop(answer: ChatCompletion) -> None:
    assert answer.choices[0].finish_reason == "stop"


def test_stream_opens_with_the_assistant_role(
    streamed_answer: list[ChatCompletionChunk],
) -> None:
    assert streamed_answer[0].choices[0].delta.role == "assistant"


def test_stream_deltas_join_into_the_whole_answer(
    streamed_answer: list[ChatCompletionChunk], answer: ChatCompletion
) -> None:
    assert _content(streamed_answer) == answer.choices[0].message.content


def test_stream_last_choice_carries_the_finish_reason(
    streamed_answer: list[ChatCompletionChunk],
) -> None:
    last = [chunk for chunk in streamed_answer if chunk.choices][-1]

    assert last.choices[0].finish_reason == "stop"


def test_stream_usage_comes_last_without_choices(
    streamed_with_usage: list[ChatCompletionChunk],
) -> None:
    last = streamed_with_usage[-1]

    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == (
        last.usage.prompt_tokens + last.usage.completion_tokens
    )


def test_stream_usage_is_null_before_the_last_chunk(
    streamed_with_usage: list[ChatCompletionChunk],
) -> None:
    assert all(chunk.usage is None for chunk in streamed_with_usage[:-1])


def test_max_tokens_cuts_the_answer_with_length(client: OpenAI) -> None:
    reply = _complete(client, LONG_ANSWER, max_tokens=3)

    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3


def test_max_tokens_cuts_the_stream_with_length(client: OpenAI) -> None:
    usage = {"include_usage": True}
    chunks = _stream(client, LONG_ANSWER, max_tokens=3, stream_options=usage)
    finish = [chunk for chunk in chunks if chunk.choices][-1]

    assert finish.choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_stop_string_ends_the_answer_before_it(client: OpenAI, alphabet: str) -> None:
    assert STOP in alphabet, "the prompt no longer leads the model to the stop string"

    reply = _complete(client, ALPHABET, max_tokens=ALPHABET_MAX_TOKENS, stop=[STOP])

    assert reply.choices[0].message.content == alphabet[: alphabet.index(STOP)]


def test_stop_string_never_reaches_the_stream(client: OpenAI, alphabet: str) -> None:
    assert STOP in alphabet, "the prompt no longer leads the model to the stop string"

    chunks = _stream(client, ALPHABET, max_tokens=ALPHABET_MAX_TOKENS, stop=[STOP])

    # Equal to the text before the stop string, so not even its start leaked.
    assert _content(chunks) == alphabet[: alphabet.index(STOP)]


def test_unknown_model_raises_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-model", messages=QUESTION, max_tokens=1
        )

    assert caught.value.code == "model_not_found"


def test_zero_max_tokens_raises_bad_request_on_the_field(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _complete(client, QUESTION, max_tokens=0)

    assert caught.value.param == "max_tokens"


def test_prompt_over_the_context_raises_context_length_exceeded(
    client: OpenAI,
) -> None:
    messages = [{"role": "user", "content": "hello " * 10_000}]

    with pytest.raises(openai.BadRequestError) as caught:
        _complete(client, messages, max_tokens=1)

    assert caught.value.code == "context_length_exceeded"


def test_models_list_names_the_default_model(client: OpenAI) -> None:
    assert MODEL in [model.id for model in client.models.list()]


async def _stream_async(port: int) -> str:
    base_url = f"http://127.0.0.1:{port}/v1"
    async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as aio:
        chunks = await aio.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=ANSWER_MAX_TOKENS,
            stream=True,
        )
        return _content([chunk async for chunk in chunks])


def test_async_client_streams_the_same_answer(
    server_port: int, answer: ChatCompletion
) -> None:
    assert asyncio.run(_stream_async(server_port)) == answer.choices[0].message.content
