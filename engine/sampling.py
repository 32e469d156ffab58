"""Pick the next token from one row of logits.

A chain of small steps: logits -> probabilities (temperature) -> nucleus cut
(top_p) -> one draw. Random draws happen on the CPU with a per-request
generator, so a seeded request gives the same tokens on any device and is not
disturbed by other requests drawing in between.
"""

from __future__ import annotations

import torch

from engine.request import SamplingParams

# Below this a float32 softmax is argmax in all but name, and dividing by a
# temperature that float32 rounds to zero would give NaN; such requests are greedy.
MIN_TEMPERATURE = 1e-5


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


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """The next token id from ``logits`` ([vocab], any device, any float dtype)."""
    if params.temperature < MIN_TEMPERATURE:
        return greedy(logits)
    probs = probs_from_logits(logits.detach().to("cpu"), params.temperature)
    probs = top_p_filter(probs, params.top_p)
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


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p``."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)  # [vocab] each
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs

    # A token stays while the tokens ranked above it hold less than top_p; the
    # first one always stays, so a tiny top_p degrades to greedy, not to nothing.
    drop_sorted = mass_before >= top_p
    drop_sorted[0] = False
    drop = torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted)
    return probs.masked_fill(drop, 0.0)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    # multinomial accepts unnormalised weights, so the nucleus needs no rescale.
    return int(torch.multinomial(probs, num_samples=1, generator=generator).item())
