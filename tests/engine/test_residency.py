"""The residency plan: what a memory budget keeps and what it streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.checkpoint import Checkpoint
from engine.loader import kv_tokens_in
from engine.residency import BudgetTooSmallError, parse_bytes, plan_residency
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from tests.engine.test_runner_identity import PROMPTS, reference_tokens, streamed_tokens
from tests.engine.tiny_models import CONFIGS, build_model, save_model

LAYERS = [100] * 10


def test_budget_keeps_leading_layers_after_kv_and_buffers() -> None:
    plan = plan_residency(
        1000, fixed_bytes=200, layer_bytes=LAYERS, kv_bytes=100, in_flight_layers=3
    )
    # 1000 - 200 fixed - 100 KV - 3 x 100 in flight leaves room for 4 layers.
    assert sorted(plan.resident_layers) == [0, 1, 2, 3]
    assert plan.streamed_bytes_per_sweep == 600


def test_budget_short_of_the_wanted_buffers_reads_ahead_less() -> None:
    # 550 - 200 fixed - 100 KV leaves 250: two layers in flight, not four.
    plan = plan_residency(550, 200, LAYERS, 100, in_flight_layers=4)

    assert plan.in_flight_layers == 2
    assert plan.resident_layers == frozenset()


def test_budget_short_of_two_layers_in_flight_is_refused() -> None:
    with pytest.raises(BudgetTooSmallError, match="2 at a time"):
        plan_residency(450, 200, LAYERS, 100, in_flight_layers=4)


def test_layers_used_in_place_leave_all_the_room_to_resident_ones() -> None:
    plan = plan_residency(700, 200, LAYERS, 100, in_flight_layers=0)

    assert sorted(plan.resident_layers) == [0, 1, 2, 3]
    assert plan.streaming_buffer_bytes == 0


def test_model_that_fits_streams_nothing() -> None:
    plan = plan_residency(1300, 200, LAYERS, 100, 3)
    assert plan.streamed_layers == []
    assert plan.streaming_buffer_bytes == 0


def test_no_budget_streams_every_layer() -> None:
    assert len(plan_residency(None, 200, LAYERS, 0, 3).streamed_layers) == 10


def test_budget_below_the_fixed_parts_is_refused() -> None:
    with pytest.raises(BudgetTooSmallError, match="cannot hold"):
        plan_residency(250, 200, LAYERS, 100, 3)


@pytest.mark.parametrize(
    ("text", "size"), [("2GB", 2 * 10**9), ("512MiB", 2**29), ("1e6", 10**6)]
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_bytes(text) == size


def test_partly_resident_runner_matches_transformers(tmp_path: Path) -> None:
    model = build_model(CONFIGS["qwen3"])
    runner = ModelRunner(
        build_skeleton(model.config),
        Checkpoint(save_model(model, tmp_path)),
        torch.device("cpu"),
        torch.float32,
        1,
        frozenset({0, 2}),
    )
    try:
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected
        assert runner.layer_reads == len(expected[0]) * 1  # only layer 1 streams
    finally:
        runner.close()


def test_a_kv_budget_below_one_block_is_refused() -> None:
    per_token = 46_080  # SmolLM2-135M's keys and values of one token, float32
    with pytest.raises(BudgetTooSmallError, match="holds 0 tokens"):
        kv_tokens_in(1_000, per_token)
    with pytest.raises(BudgetTooSmallError, match="at least 16"):
        kv_tokens_in(per_token, per_token)
    assert kv_tokens_in(16 * per_token, per_token) == 16
    assert kv_tokens_in(0, per_token) is None
