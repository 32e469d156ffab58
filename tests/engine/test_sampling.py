import torch

from engine.request import SamplingParams
from engine.sampling import make_generator, sample_next

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


def test_tiny_top_p_always_picks_argmax():
    logits = spread_logits()
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=1e-6, seed=3)
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
