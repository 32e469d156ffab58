"""The official ``openai`` SDK against a live ``layerstream serve`` process.

One server, with the real default model, serves the whole session. Requests are
greedy and short so the file stays quick on a CPU; each request whose answer
several tests inspect is made once, by a module-scoped fixture.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import torch
from openai import AsyncOpenAI, OpenAI
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

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


COMPLETION_PROMPT = "Here is a list of three fruits:\n1."


@pytest.fixture(scope="module")
def text_completion(client: OpenAI) -> Completion:
    return client.completions.create(
        model=MODEL, prompt=COMPLETION_PROMPT, temperature=0, max_tokens=16
    )


def test_completion_answers_a_text_prompt(text_completion: Completion) -> None:
    choice = text_completion.choices[0]

    assert text_completion.object == "text_completion"
    assert choice.text.strip()
    assert choice.finish_reason == "length"
    assert text_completion.usage is not None
    assert text_completion.usage.completion_tokens == 16


def test_completion_stops_at_a_plain_string_stop(
    client: OpenAI, text_completion: Completion
) -> None:
    whole = text_completion.choices[0].text
    assert "\n" in whole, "the prompt no longer leads the model to a newline"

    reply = client.completions.create(
        model=MODEL, prompt=COMPLETION_PROMPT, temperature=0, max_tokens=16, stop="\n"
    )

    assert reply.choices[0].text == whole[: whole.index("\n")]
    assert reply.choices[0].finish_reason == "stop"


def test_completion_stream_adds_up_to_the_whole_text(
    client: OpenAI, text_completion: Completion
) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=COMPLETION_PROMPT,
            temperature=0,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == text_completion.choices[0].text
    assert chunks[-1].usage == text_completion.usage


def test_chat_stream_helper_gives_the_whole_answer(
    client: OpenAI, answer: ChatCompletion
) -> None:
    with client.chat.completions.stream(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=ANSWER_MAX_TOKENS
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()

    content = answer.choices[0].message.content
    assert "".join(deltas) == content
    assert final.choices[0].message.content == content


def test_several_choices_each_come_with_their_index(client: OpenAI) -> None:
    # That a seed reproduces them is checked on a tiny model, quicker to run.
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=1, seed=1, n=2, max_tokens=3
    )

    assert [choice.index for choice in reply.choices] == [0, 1]
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 2 * 3


def test_chat_logprobs_equal_transformers_log_softmax(
    client: OpenAI, smollm2_gguf: Path, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    reply = _complete(client, QUESTION, max_tokens=1, logprobs=True, top_logprobs=5)
    assert reply.choices[0].logprobs is not None
    (entry,) = reply.choices[0].logprobs.content or []

    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    ids = smollm2_tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    expected = torch.topk(torch.log_softmax(logits, dim=-1), 5)

    tokens = smollm2_tokenizer.convert_ids_to_tokens(expected.indices.tolist())
    texts = [smollm2_tokenizer.convert_tokens_to_string([t]) for t in tokens]
    assert [top.token for top in entry.top_logprobs] == texts
    got = torch.tensor([top.logprob for top in entry.top_logprobs])
    assert torch.allclose(got, expected.values, atol=1e-3)
    assert entry.token == texts[0]  # greedy


async def _complete_async(port: int) -> str:
    base_url = f"http://127.0.0.1:{port}/v1"
    async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as aio:
        reply = await aio.completions.create(
            model=MODEL, prompt=COMPLETION_PROMPT, temperature=0, max_tokens=16
        )
        return reply.choices[0].text


def test_async_client_completes_the_same_text(
    server_port: int, text_completion: Completion
) -> None:
    text = asyncio.run(_complete_async(server_port))

    assert text == text_completion.choices[0].text


def test_completion_prompt_over_the_context_names_the_prompt(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="hello " * 10_000, max_tokens=1)

    assert (caught.value.code, caught.value.param) == (
        "context_length_exceeded",
        "prompt",
    )


def test_tokenize_counts_the_chat_prompt(
    server_port: int, answer: ChatCompletion
) -> None:
    url = f"http://127.0.0.1:{server_port}/tokenize"
    counted = httpx.post(url, json={"model": MODEL, "messages": QUESTION}).json()

    assert answer.usage is not None
    assert counted["count"] == answer.usage.prompt_tokens


PERSON_PROMPT = [{"role": "user", "content": "Give a person's name and age as JSON."}]
WEATHER_PROMPT = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
STRUCTURED_MAX_TOKENS = 40


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def parsed_person(client: OpenAI) -> ParsedChatCompletion[Person]:
    """The SDK's structured-output helper: it sends a strict json_schema."""
    return client.chat.completions.parse(
        model=MODEL,
        messages=PERSON_PROMPT,
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
        response_format=Person,
    )


@pytest.fixture(scope="module")
def streamed_call(client: OpenAI) -> list[ChatCompletionChunk]:
    return _stream(
        client,
        WEATHER_PROMPT,
        max_tokens=STRUCTURED_MAX_TOKENS,
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )


def test_json_mode_gives_every_choice_an_object(client: OpenAI) -> None:
    # Two choices decode side by side, each through its own grammar state.
    reply = _complete(
        client,
        PERSON_PROMPT,
        max_tokens=STRUCTURED_MAX_TOKENS,
        response_format={"type": "json_object"},
        n=2,
    )

    assert [choice.finish_reason for choice in reply.choices] == ["stop", "stop"]
    for choice in reply.choices:
        assert isinstance(json.loads(choice.message.content or ""), dict)


def test_parse_helper_returns_the_model_instance(
    parsed_person: ParsedChatCompletion[Person],
) -> None:
    assert isinstance(parsed_person.choices[0].message.parsed, Person)


def test_json_schema_answer_validates_against_the_schema(
    parsed_person: ParsedChatCompletion[Person],
) -> None:
    content = parsed_person.choices[0].message.content or ""

    jsonschema.validate(json.loads(content), Person.model_json_schema())


def test_invalid_json_schema_raises_bad_request_on_response_format(
    client: OpenAI,
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "broken", "schema": {"type": "nonsense"}},
    }

    with pytest.raises(openai.BadRequestError) as caught:
        _complete(client, PERSON_PROMPT, max_tokens=1, response_format=response_format)

    assert (caught.value.param or "").startswith("response_format")


def test_required_tool_choice_returns_a_valid_call(client: OpenAI) -> None:
    reply = _complete(
        client,
        WEATHER_PROMPT,
        max_tokens=STRUCTURED_MAX_TOKENS,
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )

    [call] = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_streamed_call_items_have_an_index_and_the_first_names_the_call(
    streamed_call: list[ChatCompletionChunk],
) -> None:
    items = [
        item
        for chunk in streamed_call
        if chunk.choices
        for item in chunk.choices[0].delta.tool_calls or []
    ]

    assert items and all(item.index == 0 for item in items)
    first = items[0]
    assert first.id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"


def test_streamed_call_ends_with_tool_calls_and_no_content(
    streamed_call: list[ChatCompletionChunk],
) -> None:
    finish = [chunk for chunk in streamed_call if chunk.choices][-1]

    assert finish.choices[0].finish_reason == "tool_calls"
    assert _content(streamed_call) == ""


def test_embeddings_come_back_in_order_at_unit_length(client: OpenAI) -> None:
    texts = ["The sky is blue.", "Paris"]
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    decoded = client.embeddings.create(model=MODEL, input=texts)
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")

    assert [item.index for item in decoded.data] == [0, 1]
    for item, plain in zip(decoded.data, floats.data, strict=True):
        assert len(item.embedding) == 576  # SmolLM2-135M's hidden size
        assert sum(x * x for x in item.embedding) == pytest.approx(1.0, abs=1e-5)
        assert item.embedding == pytest.approx(plain.embedding, abs=1e-6)
    assert decoded.usage.prompt_tokens == decoded.usage.total_tokens > 0
