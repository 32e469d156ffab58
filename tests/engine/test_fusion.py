"""q, k, v (and gate, up) as one product: the same outputs, the same tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig

from engine.checkpoint import Checkpoint
from engine.fusion import fuse_resident
from engine.kernels import OneDnnLinear
from engine.onednn import machine_blocking
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from tests.engine.test_blocked_store import save_blocked
from tests.engine.test_runner_identity import (
    PROMPTS,
    reference_tokens,
    streamed_tokens,
)
from tests.engine.tiny_models import SHAPE, build_model, save_model

pytestmark = pytest.mark.skipif(
    machine_blocking() is None, reason="oneDNN takes no known blocked order here"
)
# Every projection 64 rows or more, so that q, k and v all block and fuse.
WIDE_KV = LlamaConfig(**{**SHAPE, "num_key_value_heads": 4}, num_hidden_layers=2)


def group_of_three() -> tuple[list[OneDnnLinear], list[torch.Tensor]]:
    torch.manual_seed(0)
    block = nn.Module()
    plain = []
    for name in ("q_proj", "k_proj", "v_proj"):
        linear = nn.Linear(64, 64, bias=name == "k_proj")
        plain.append(linear.weight.detach().clone())
        linear.__class__ = OneDnnLinear
        linear.weight = nn.Parameter(machine_blocking().block(linear.weight.detach()))
        setattr(block, name, linear)
    assert fuse_resident(block) == 1
    return [block.q_proj, block.k_proj, block.v_proj], plain


def test_each_member_returns_its_own_product() -> None:
    members, plain = group_of_three()
    x = torch.randn(1, 5, 64)
    with torch.inference_mode():
        got = [member(x) for member in members]
    for member, weight, out in zip(members, plain, got, strict=True):
        expected = F.linear(x, weight, member.bias)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_a_member_called_on_another_input_computes_its_own() -> None:
    members, plain = group_of_three()
    x, y = torch.randn(1, 3, 64), torch.randn(1, 3, 64)
    with torch.inference_mode():
        members[0](x)
        got = members[2](y)
    torch.testing.assert_close(got, F.linear(y, plain[2]), rtol=1e-5, atol=1e-5)


def runner_on(folder: Path, resident: bool) -> ModelRunner:
    layers = frozenset(range(WIDE_KV.num_hidden_layers)) if resident else frozenset()
    return ModelRunner(
        build_skeleton(WIDE_KV),
        Checkpoint(folder),
        torch.device("cpu"),
        torch.float32,
        2,
        resident_layers=layers,
    )


def test_resident_groups_fuse_and_keep_greedy_tokens(tmp_path: Path) -> None:
    model = build_model(WIDE_KV)
    runner = runner_on(save_model(model, tmp_path), resident=True)
    try:
        layer = runner.layers[0]
        assert layer.self_attn.q_proj.fused is not None
        assert layer.mlp.gate_proj.fused is not None
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected
    finally:
        runner.close()


def test_blocked_weights_side_by_side_in_the_file_fuse_in_place(
    tmp_path: Path,
) -> None:
    model = build_model(WIDE_KV)
    save_blocked(save_model(model, tmp_path), machine_blocking())
    runner = runner_on(tmp_path, resident=False)
    try:
        layer = runner.layers[0]
        # The file holds keys in sorted order: gate and up touch, q and k do not.
        assert layer.mlp.gate_proj.fused is not None
        assert layer.self_attn.q_proj.fused is None
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected
    finally:
        runner.close()
