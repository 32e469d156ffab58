"""A Llama layer run function by function gives the layer's own bits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.direct_layer import direct_layer
from engine.runner import ModelRunner, SweepInput
from tests.engine.test_runner_identity import runner_for
from tests.engine.tiny_models import CONFIGS, build_model, save_model

PROMPTS = ([5, 17, 42, 99, 3, 8, 250, 11, 64, 7, 1, 300], [9, 200, 31])
STEPS = 6


def sweep_logits(runner: ModelRunner) -> list[torch.Tensor]:
    """Every logit of a prompt sweep and of greedy decoding after it."""
    caches = [runner.new_cache() for _ in PROMPTS]
    pending = [list(prompt) for prompt in PROMPTS]
    logits = []
    for _ in range(STEPS):
        pairs = zip(pending, caches, strict=True)
        inputs = [SweepInput(ids, cache) for ids, cache in pairs]
        outputs = [output.logits for output in runner.sweep(inputs)]
        logits += outputs
        pending = [[int(row.argmax())] for row in outputs]
    return logits


@pytest.mark.parametrize("name", ["llama", "llama-tied"])
def test_direct_layers_give_the_same_bits_as_the_layer_call(
    name: str, tmp_path: Path
) -> None:
    model = build_model(CONFIGS[name])
    folder = save_model(model, tmp_path)
    direct, called = runner_for(model, folder), runner_for(model, folder)
    try:
        assert all(layer is not None for layer in direct._direct)
        called._direct = [None] * len(called.layers)  # the layers' own call
        pairs = zip(sweep_logits(direct), sweep_logits(called), strict=True)
        assert all(torch.equal(mine, theirs) for mine, theirs in pairs)
    finally:
        direct.close()
        called.close()


@pytest.mark.parametrize("name", ["qwen2", "gemma3"])
def test_other_layer_classes_keep_their_own_call(name: str) -> None:
    model = build_model(CONFIGS[name])
    layers = model.model.layers
    assert all(direct_layer(layer) is None for layer in layers)
