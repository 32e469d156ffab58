"""The body of ``POST /v1/completions``; all input validation lives here."""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictBool, StrictInt, ValidationInfo, field_validator

from server.schemas.sampling import MAX_TOP_LOGPROBS, SamplingFields

# OpenAI's default for this endpoint, unlike chat's "the rest of the context".
DEFAULT_MAX_TOKENS = 16
_PROMPT_SHAPES = (
    "a string, an array of strings, an array of token ids or an array of "
    "arrays of token ids"
)


class CompletionRequest(SamplingFields):
    # Every form arrives here as a list of prompts, each a text or token ids.
    prompt: list[str] | list[list[StrictInt]]
    suffix: str | None = None
    max_tokens: StrictInt | None = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    echo: StrictBool | None = None
    logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: StrictInt | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _as_prompt_list(cls, prompt: Any) -> Any:
        if isinstance(prompt, str) or (prompt and is_token_ids(prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(f"prompt must be {_PROMPT_SHAPES}, not empty")
        if not all(isinstance(p, str) for p in prompt) and not all(
            p and is_token_ids(p) for p in prompt
        ):
            raise ValueError(f"prompt must be {_PROMPT_SHAPES}")
        return prompt

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix: str | None) -> str | None:
        if suffix:
            raise ValueError("suffix is not supported: the models served fill no gaps")
        return suffix

    @field_validator("logprobs")
    @classmethod
    def _no_prompt_logprobs(cls, logprobs: int | None, info: ValidationInfo) -> Any:
        # The engine computes the logits of the last position only, so it has
        # no logprobs for the prompt's tokens, which echo would list.
        if logprobs is not None and info.data.get("echo"):
            raise ValueError("logprobs cannot be combined with echo")
        return logprobs

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)
        if best_of is not None and best_of != n:
            raise ValueError(f"best_of must equal n ({n}): candidates are not ranked")
        return best_of

    @property
    def requested_max_tokens(self) -> int | None:
        """The cap asked for; an explicit null means the rest of the context."""
        return self.max_tokens


def is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(token, int) and not isinstance(token, bool) for token in value
    )
