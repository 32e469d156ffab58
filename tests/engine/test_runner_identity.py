"""Greedy tokens of the layer-streamed runner equal transformers' own, float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from engine.checkpoint import Checkpoint
from engine.runner import ModelRunner, SweepInput
from engine.skeleton import build_skeleton
from tests.engine.tiny_models import CONFIGS, build_model, save_model

PROMPTS = ([5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 1, 300], [9, 200, 31])
NEW_TOKENS = 16


def reference_tokens(model: PreTrainedModel, prompt: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
    )
    return out[0, len(prompt) :].tolist()


def runner_for(model: PreTrainedModel, folder: Path) -> ModelRunner:
    skeleton = build_skeleton(model.config)
    return ModelRunner(
        skeleton, Checkpoint(folder), torch.device("cpu"), torch.float32, 2
    )


def streamed_tokens(
    runner: ModelRunner, prompts: tuple[list[int], ...]
) -> list[list[int]]:
    """Greedy decoding of all prompts together, sharing every sweep."""
    caches = [runner.new_cache() for _ in prompts]
    pending = [list(prompt) for prompt in prompts]
    outputs: list[list[int]] = [[] for _ in prompts]
    for _ in range(NEW_TOKENS):
        batch = [
            SweepInput(ids, cache) for ids, cache in zip(pending, caches, strict=True)
        ]
        for output, swept in zip(outputs, runner.sweep(batch), strict=True):
            output.append(int(swept.logits.argmax()))
        pending = [[output[-1]] for output in outputs]
    return outputs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_tokens_match_transformers(name: str, tmp_path: Path) -> None:
    model = build_model(CONFIGS[name])
    runner = runner_for(model, save_model(model, tmp_path))
    try:
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected
    finally:
        runner.close()


def test_sharded_checkpoint_matches_transformers(tmp_path: Path) -> None:
    model = build_model(CONFIGS["llama"])
    save_model(model, tmp_path, shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    runner = runner_for(model, tmp_path)
    try:
        assert streamed_tokens(runner, PROMPTS[:1]) == [
            reference_tokens(model, PROMPTS[0])
        ]
    finally:
        runner.close()


def test_each_layer_is_read_once_per_sweep(tmp_path: Path) -> None:
    model = build_model(CONFIGS["llama"])
    runner = runner_for(model, save_model(model, tmp_path))
    try:
        streamed_tokens(runner, PROMPTS)
        assert runner.layer_reads == NEW_TOKENS * model.config.num_hidden_layers
    finally:
        runner.close()


def test_bfloat16_checkpoint_staged_and_upcast_matches_transformers(
    tmp_path: Path,
) -> None:
    # Stored in another dtype than the compute's, layers go through the staging
    # buffers instead of being used in place.
    build_model(CONFIGS["llama"]).to(torch.bfloat16).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    runner = runner_for(model.eval(), tmp_path)
    try:
        assert not runner.in_place_layers
        assert streamed_tokens(runner, PROMPTS) == [
            reference_tokens(model, prompt) for prompt in PROMPTS
        ]
    finally:
        runner.close()
