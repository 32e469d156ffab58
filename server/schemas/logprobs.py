"""Log-probabilities as OpenAI returns them: chat's entries and the legacy lists."""

from __future__ import annotations

from pydantic import BaseModel


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes, which may split a character


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """Chat's ``choices[].logprobs``: one entry per generated token."""

    content: list[TokenLogprobEntry]


class CompletionLogprobs(BaseModel):
    """``/v1/completions``' ``choices[].logprobs``: parallel lists, one per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]  # where each token starts in the choice's text
