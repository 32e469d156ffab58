"""Request fields chat and text completions share: sampling, stopping, streaming."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from engine.request import SamplingParams
from server.schemas.body import RequestBody

# torch seeds are 64-bit; OpenAI documents no range, so the signed one is taken.
SEED_RANGE = (-(2**63), 2**63 - 1)
# OpenAI's own limits on choices per request and on listed alternatives.
MAX_CHOICES = 128
MAX_TOP_LOGPROBS = 20


StopList = Annotated[list[str], Field(max_length=4)]
# Strict: OpenAI refuses true or "0.5" for a number; an integer is a number.
Number = Annotated[float, Field(strict=True)]
Bias = Annotated[Number, Field(ge=-100, le=100)]
Penalty = Annotated[Number, Field(ge=-2, le=2)]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class SamplingFields(RequestBody):
    # Fields of the OpenAI API this server does not use yet are accepted and
    # ignored, as clients send many of them by default.
    # NaN passes no range check, so every float must be finite first.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    temperature: Number | None = Field(default=None, ge=0, le=2)
    # OpenAI takes 0 as well; the filter always keeps the likeliest token.
    top_p: Number | None = Field(default=None, ge=0, le=1)
    # Not in OpenAI's API, but common to local servers: -1 or 0 turns it off.
    top_k: StrictInt | None = Field(default=None, ge=-1)
    min_p: Number | None = Field(default=None, ge=0, le=1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # It divides the logits of tokens already seen: far below 1 they overflow.
    repetition_penalty: Number | None = Field(default=None, ge=0.01, le=10)
    # JSON object keys are strings; pydantic reads "50256" as the id 50256.
    logit_bias: dict[int, Bias] | None = None
    seed: StrictInt | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: StopList | None = None
    # Strict: OpenAI refuses "3" or true for a count, and so does this server.
    n: StrictInt = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _wrap_stop_string(cls, stop: Any) -> Any:
        return [stop] if isinstance(stop, str) else stop

    @field_validator("n", mode="before")
    @classmethod
    def _null_n_is_one(cls, n: Any) -> Any:
        return 1 if n is None else n

    @property
    def is_streamed(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """The engine's parameters; unset fields take OpenAI's defaults."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_or(self.temperature, 1.0),
            top_p=_or(self.top_p, 1.0),
            top_k=_or(self.top_k, 0),
            min_p=_or(self.min_p, 0.0),
            presence_penalty=_or(self.presence_penalty, 0.0),
            frequency_penalty=_or(self.frequency_penalty, 0.0),
            repetition_penalty=_or(self.repetition_penalty, 1.0),
            logit_bias=tuple(sorted((self.logit_bias or {}).items())),
            seed=self.seed,
            stop=tuple(self.stop or ()),
            logprobs=logprobs,
        )


T = TypeVar("T")


def _or(value: T | None, default: T) -> T:
    return default if value is None else value
