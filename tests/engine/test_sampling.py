import pytest
import torch

from engine.request import SamplingParams
from engine.sampling import (
    adjust_logits,
    choice_seed,
    make_generator,
    sample_next,
    token_logprob,
)

DRAWS = 4000


def draw_many(logits: torch.Tensor, params: SamplingParams, n: int) -> list[int]:
    generator = make_generator(params.seed)
    return [sample_next(logits, params, generator) for _ in range(n)]


def spread_logits(vocab: int = 1000) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(0))


def test_greedy_picks_argmax():
    logits = spread_logits()
    params = SamplingParams(max_tokens=1, temperature=0.0)
    assert sample_next(logits, params, None) == int(torch.argmax(logits))


def test_greedy_tie_goes_to_lowest_id():
    logits = torch.tensor([0.0, 3.0, 1.0, 3.0])
    params = SamplingParams(max_tokens=1, temperature=0.0)
    assert sample_next(logits, params, None) == 1


def test_same_seed_gives_same_sequence():
    params = SamplingParams(max_tokens=1, temperature=1.0, seed=1234)
    logits = spread_logits()
    assert draw_many(logits, params, 50) == draw_many(logits, params, 50)


def test_different_seeds_give_different_sequences():
    logits = spread_logits()
    first = draw_many(logits, SamplingParams(max_tokens=1, seed=1), 50)
    second = draw_many(logits, SamplingParams(max_tokens=1, seed=2), 50)
    assert first != second


def test_unseeded_generators_differ():
    logits = spread_logits()
    params = SamplingParams(max_tokens=1)
    torch.manual_seed(0)
    first = draw_many(logits, params, 50)
    torch.manual_seed(0)
    assert first != draw_many(logits, params, 50)


@pytest.mark.parametrize("top_p", [1e-6, 0.0])
def test_tiny_top_p_always_picks_argmax(top_p: float):
    logits = spread_logits()
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=top_p, seed=3)
    assert set(draw_many(logits, params, 200)) == {int(torch.argmax(logits))}


def test_top_p_keeps_smallest_set_reaching_mass():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.7, seed=4)
    assert set(draw_many(logits, params, 500)) == {0, 1}


def test_top_p_renormalises_over_kept_tokens():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.7, seed=5)
    share = draw_many(logits, params, DRAWS).count(0) / DRAWS
    assert abs(share - 0.5 / 0.8) < 0.03


def top_share(temperature: float) -> float:
    logits = torch.tensor([1.0, 0.0, -0.5])
    params = SamplingParams(max_tokens=1, temperature=temperature, seed=6)
    return draw_many(logits, params, DRAWS).count(0) / DRAWS


def test_low_temperature_sharpens_distribution():
    assert top_share(0.5) > top_share(1.0) > top_share(2.0)


def test_draw_frequency_matches_tempered_softmax():
    logits = torch.tensor([1.0, 0.0, -0.5])
    expected = torch.softmax(logits / 0.5, dim=-1)[0].item()
    assert abs(top_share(0.5) - expected) < 0.03


def test_half_precision_logits_are_accepted():
    logits = spread_logits().to(torch.bfloat16)
    params = SamplingParams(max_tokens=1, temperature=0.7, top_p=0.9, seed=7)
    assert 0 <= sample_next(logits, params, make_generator(7)) < logits.numel()


def test_vanishing_temperature_acts_as_greedy():
    logits = spread_logits() * 50
    params = SamplingParams(max_tokens=1, temperature=1e-300, seed=3)
    assert set(draw_many(logits, params, 20)) == {int(torch.argmax(logits))}


def shares(
    logits: torch.Tensor, params: SamplingParams, n: int = DRAWS
) -> torch.Tensor:
    """How often each token was drawn, as a fraction of ``n`` draws."""
    counts = torch.bincount(
        torch.tensor(draw_many(logits, params, n)), minlength=logits.numel()
    )
    return counts / n


def test_top_k_draws_only_the_k_likeliest_in_proportion():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    params = SamplingParams(max_tokens=1, top_k=2, seed=8)
    expected = torch.softmax(logits[:2], dim=-1)
    drawn = shares(logits, params)
    assert drawn[2:].sum() == 0
    assert torch.allclose(drawn[:2], expected, atol=0.03)


def test_min_p_drops_tokens_below_its_share_of_the_top():
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])
    params = SamplingParams(max_tokens=1, min_p=0.2, seed=9)
    drawn = shares(probs.log(), params)
    # 0.2 * 0.5 = 0.1: only the last token falls below.
    expected = probs[:3] / probs[:3].sum()
    assert drawn[3] == 0
    assert torch.allclose(drawn[:3], expected, atol=0.03)


def test_logit_bias_shifts_the_distribution_by_its_value():
    logits = torch.tensor([1.0, 0.0, -0.5])
    params = SamplingParams(max_tokens=1, logit_bias=((2, 2.0),), seed=10)
    adjusted = adjust_logits(logits, params, [], [])
    expected = torch.softmax(logits + torch.tensor([0.0, 0.0, 2.0]), dim=-1)
    assert torch.allclose(shares(adjusted, params), expected, atol=0.03)


def test_logit_bias_of_minus_100_bans_the_greedy_choice():
    logits = spread_logits()
    best = int(torch.argmax(logits))
    params = SamplingParams(max_tokens=1, temperature=0.0, logit_bias=((best, -100),))
    adjusted = adjust_logits(logits, params, [], [])
    assert sample_next(adjusted, params, None) != best


def test_presence_and_frequency_penalties_follow_openai_formula():
    logits = spread_logits(8)
    output = [1, 1, 1, 4]
    params = SamplingParams(max_tokens=1, presence_penalty=0.5, frequency_penalty=0.3)
    expected = logits.clone()
    for token in set(output):
        expected[token] -= 0.5 + 0.3 * output.count(token)
    assert torch.allclose(adjust_logits(logits, params, [2], output), expected)


def test_repetition_penalty_lowers_seen_tokens_of_either_sign():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    params = SamplingParams(max_tokens=1, repetition_penalty=2.0)
    adjusted = adjust_logits(logits, params, prompt_ids=[0], output_ids=[1])
    assert adjusted.tolist() == [1.0, -4.0, 2.0, -2.0]


def test_positive_presence_penalty_makes_repeats_rarer():
    logits = torch.zeros(4)
    params = SamplingParams(max_tokens=1, presence_penalty=1.0, seed=11)
    adjusted = adjust_logits(logits, params, [], [0, 0])
    expected = torch.softmax(torch.tensor([-1.0, 0.0, 0.0, 0.0]), dim=-1)
    assert torch.allclose(shares(adjusted, params), expected, atol=0.03)


def test_without_penalties_or_bias_the_logits_are_not_copied():
    logits = spread_logits()
    params = SamplingParams(max_tokens=1, temperature=0.7, top_k=5, min_p=0.1)
    assert adjust_logits(logits, params, [1, 2], [3]) is logits


def test_penalties_leave_the_callers_logits_untouched():
    logits = spread_logits()
    before = logits.clone()
    params = SamplingParams(
        max_tokens=1, repetition_penalty=1.5, logit_bias=((3, 5.0),)
    )
    adjust_logits(logits, params, [1, 2, 3], [3, 4])
    assert torch.equal(logits, before)


def test_token_logprob_is_the_raw_log_softmax():
    logits = spread_logits()
    entry = token_logprob(logits, 7, num_top=3)
    reference = torch.log_softmax(logits, dim=-1)
    top = torch.topk(reference, 3)
    assert entry.token_id == 7
    assert abs(entry.logprob - reference[7].item()) < 1e-6
    assert [token for token, _ in entry.top] == top.indices.tolist()
    assert torch.allclose(torch.tensor([lp for _, lp in entry.top]), top.values)


def test_choice_seeds_are_reproducible_and_distinct():
    seeds = [choice_seed(1, index) for index in range(4)]
    assert seeds == [choice_seed(1, index) for index in range(4)]
    assert seeds[0] == 1
    assert len(set(seeds)) == 4
    assert all(-(2**63) <= seed < 2**63 for seed in seeds)
    assert choice_seed(None, 3) is None
