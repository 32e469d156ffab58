"""Pick the next token from one row of logits.

A chain of small steps: logits -> penalties and logit bias -> probabilities
(temperature) -> top_k, top_p and min_p cuts -> one draw. Random draws happen
on the CPU with a per-request generator, so a seeded request gives the same
tokens on any device and is not disturbed by other requests drawing in between.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.request import SamplingParams, TokenLogprob

# Below this a float32 softmax is argmax in all but name, and dividing by a
# temperature that float32 rounds to zero would give NaN; such requests are greedy.
MIN_TEMPERATURE = 1e-5

# Added to a seed once per choice index, modulo 2**64: an odd constant, so every
# index of a request gets a different generator (the 64-bit golden ratio).
_CHOICE_SEED_STEP = 0x9E3779B97F4A7C15


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one request: seeded when asked, else from OS entropy."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        # A fresh random seed rather than the global RNG: unseeded requests must
        # not become reproducible just because someone called torch.manual_seed.
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` of a request with ``n`` > 1 choices.

    Choice 0 keeps the request's seed, so it is the answer ``n`` = 1 gives; the
    others derive theirs from it, so the whole set is reproducible.
    """
    if seed is None or index == 0:
        return seed
    derived = (seed + index * _CHOICE_SEED_STEP) % 2**64
    return derived - 2**64 if derived >= 2**63 else derived  # a signed 64-bit seed


def adjust_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
) -> torch.Tensor:
    """Penalties and logit bias applied; ``logits`` itself when none is asked.

    Requests without them pay nothing: no copy, no move off the device.
    """
    if not params.has_penalties and not params.logit_bias:
        return logits
    scores = logits.detach().float().to("cpu", copy=True)  # [vocab]
    if params.repetition_penalty != 1.0:
        seen = torch.tensor([*prompt_ids, *output_ids], dtype=torch.long)
        scores = repetition_penalized(scores, seen, params.repetition_penalty)
    if params.presence_penalty or params.frequency_penalty:
        counts = torch.bincount(
            torch.tensor(output_ids, dtype=torch.long), minlength=scores.numel()
        )
        scores = occurrence_penalized(
            scores, counts, params.presence_penalty, params.frequency_penalty
        )
    return biased(scores, params.logit_bias)


def repetition_penalized(
    scores: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Every token already in the text made less likely (penalty > 1) or more.

    Dividing a positive logit and multiplying a negative one both lower it, so
    one penalty works on either sign; prompt and output tokens alike count.
    """
    picked = scores[seen]
    scores[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return scores


def occurrence_penalized(
    scores: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: per generated occurrence, and once for any occurrence."""
    return scores - counts * frequency - (counts > 0).float() * presence


def biased(scores: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> torch.Tensor:
    if not bias:
        return scores
    ids, values = zip(*bias, strict=True)
    return scores.index_add_(
        0, torch.tensor(ids), torch.tensor(values, dtype=scores.dtype)
    )


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """The next token id from ``logits`` ([vocab], any device, any float dtype)."""
    if params.temperature < MIN_TEMPERATURE:
        return greedy(logits)
    probs = probs_from_logits(logits.detach().to("cpu"), params.temperature)
    probs = top_k_filter(probs, params.top_k)
    probs = top_p_filter(probs, params.top_p)
    probs = min_p_filter(probs, params.min_p)
    return draw(probs, generator)


def greedy(logits: torch.Tensor) -> int:
    # Stays on the logits' device: only the index crosses over. Ties go to the
    # lowest id, as torch.argmax does.
    return int(torch.argmax(logits.float()).item())


def probs_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # Float32 throughout: half-precision softmax loses the tail the nucleus
    # cut and the draw depend on. Shifting by the maximum first keeps a tiny
    # temperature from overflowing to inf (and the softmax to NaN): the top
    # logit becomes 0 and the others go to -inf, i.e. greedy.
    shifted = logits.float() - logits.float().max()
    return torch.softmax(shifted / temperature, dim=-1)  # [vocab]


def top_k_filter(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Zero every token below the ``top_k`` likeliest (ties at the edge stay)."""
    if top_k <= 0 or top_k >= probs.numel():
        return probs
    kth = torch.topk(probs, top_k).values[-1]
    return probs.masked_fill(probs < kth, 0.0)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p``."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)  # [vocab] each
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs

    # A token stays while the tokens ranked above it hold less than top_p of
    # what an earlier cut left; the first one always stays, so a tiny top_p
    # degrades to greedy, not to nothing.
    drop_sorted = mass_before >= top_p * sorted_probs.sum()
    drop_sorted[0] = False
    drop = torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def min_p_filter(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """Zero every token less likely than ``min_p`` times the likeliest one."""
    if min_p <= 0.0:
        return probs
    return probs.masked_fill(probs < min_p * probs.max(), 0.0)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    # multinomial accepts unnormalised weights, so the cuts need no rescale.
    return int(torch.multinomial(probs, num_samples=1, generator=generator).item())


def token_logprob(logits: torch.Tensor, token_id: int, num_top: int) -> TokenLogprob:
    """The chosen token's logprob and the ``num_top`` likeliest tokens'.

    These are of the distribution the model gave: a log-softmax of the raw
    logits, before temperature, penalties, logit bias or any cut, so they say
    how likely the model found a token, whatever the sampling settings.
    """
    logprobs = torch.log_softmax(logits.detach().float(), dim=-1)  # [vocab]
    chosen = float(logprobs[token_id].item())
    if num_top <= 0:
        return TokenLogprob(token_id, chosen)
    values, ids = torch.topk(logprobs, num_top)
    top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token_id, chosen, top)
