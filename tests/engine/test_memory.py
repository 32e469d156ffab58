"""Streamed weights held at once stay bounded, however deep the model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig

from engine.checkpoint import Checkpoint
from engine.runner import ModelRunner, SweepInput
from engine.skeleton import build_skeleton, decoder_layers, materialized_nbytes
from tests.engine.tiny_models import SHAPE, build_model, save_model

DEPTH = 16
PREFETCH = 2


def test_streamed_layers_held_stay_within_prefetch_depth(tmp_path: Path) -> None:
    model = build_model(LlamaConfig(**SHAPE, num_hidden_layers=DEPTH))
    checkpoint = Checkpoint(save_model(model, tmp_path))
    runner = ModelRunner(
        build_skeleton(model.config),
        checkpoint,
        torch.device("cpu"),
        torch.float32,
        PREFETCH,
    )
    layers = decoder_layers(runner.model)
    layer_bytes = checkpoint.layer_numel(0) * 4
    held: list[int] = []  # bytes of streamed weights at each layer step

    def record(_module: nn.Module, _args: object) -> None:
        queued = runner.prefetcher.num_ready * layer_bytes
        held.append(materialized_nbytes(layers) + queued)

    for layer in layers:
        layer.register_forward_pre_hook(record)
    cache = runner.new_cache()
    for ids in ([1, 2, 3, 4], [5], [6], [7]):
        runner.sweep([SweepInput(ids, cache)])
    runner.close()

    assert len(held) == 4 * DEPTH
    # The layer being computed plus at most PREFETCH read ahead; never the model.
    assert layer_bytes <= max(held) <= (PREFETCH + 1) * layer_bytes


def test_converted_layers_are_read_into_the_reused_buffer(tmp_path: Path) -> None:
    # Stored as bfloat16, computed in float32: the conversion must land in the
    # staging buffer, not in a new allocation for every layer of every sweep.
    model = build_model(LlamaConfig(**SHAPE, num_hidden_layers=2))
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    checkpoint = Checkpoint(tmp_path)
    buffer = torch.empty(checkpoint.staged_nbytes(torch.float32), dtype=torch.uint8)
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    stored = model.model.layers[1].state_dict()

    tensors = checkpoint.read_layer(1, torch.float32, buffer)

    assert tensors.keys() == stored.keys()
    for key, tensor in tensors.items():
        assert tensor.dtype == torch.float32
        assert start <= tensor.data_ptr() < end
        assert torch.equal(tensor, stored[key].float())
