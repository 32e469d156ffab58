"""Weights in oneDNN's blocked order: the same products, the same greedy tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, PretrainedConfig

import engine.onednn
from engine.checkpoint import Checkpoint
from engine.kernels import OneDnnLinear
from engine.onednn import (
    BlockedEmbedding,
    Blocking,
    cached_view,
    machine_blocking,
    picks,
)
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from tests.engine.test_runner_identity import (
    PROMPTS,
    reference_tokens,
    streamed_tokens,
)
from tests.engine.tiny_models import CONFIGS, SHAPE, build_model, save_model

needs_blocking = pytest.mark.skipif(
    machine_blocking() is None, reason="oneDNN takes no known blocked order here"
)


def test_blocked_order_round_trips_and_looks_rows_up() -> None:
    blocking = Blocking(inputs=16, rows=64)
    weight = torch.randn(192, 48)

    blocked = blocking.block(weight)

    assert blocked.shape == (3, 3, 16, 64)
    assert torch.equal(blocking.unblock(blocked), weight)
    ids = torch.tensor([[0, 63, 64], [191, 100, 5]])
    assert torch.equal(blocking.rows_of(blocked, ids), weight[ids])


def test_only_unpadded_shapes_fit() -> None:
    blocking = Blocking(inputs=16, rows=64)
    assert blocking.fits((128, 32))
    assert not blocking.fits((32, 64))  # fewer rows than a panel
    assert not blocking.fits((64, 24))
    assert not blocking.fits((64,))


@needs_blocking
@pytest.mark.parametrize("tokens", [1, 5, 16])
def test_blocked_linear_matches_torch(tokens: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 128)
    x = torch.randn(1, tokens, 64)
    expected = F.linear(x, layer.weight, layer.bias)

    layer.__class__ = OneDnnLinear
    layer.weight = nn.Parameter(machine_blocking().block(layer.weight.detach()))
    with torch.inference_mode():
        got = layer(x)

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_blocking
def test_a_weight_in_place_is_wrapped_once() -> None:
    blocked = machine_blocking().block(torch.randn(128, 64))
    assert cached_view(blocked) is cached_view(blocked)


@contextmanager
def resident_runner(
    name: str | PretrainedConfig, folder: Path
) -> Iterator[tuple[nn.Module, ModelRunner]]:
    """A saved tiny model (by name, or of a config) and a runner holding it all."""
    model = build_model(CONFIGS[name] if isinstance(name, str) else name)
    save_model(model, folder)
    layers = frozenset(range(model.config.num_hidden_layers))
    runner = ModelRunner(
        build_skeleton(model.config),
        Checkpoint(folder),
        torch.device("cpu"),
        torch.float32,
        2,
        resident_layers=layers,
    )
    try:
        yield model, runner
    finally:
        runner.close()


@needs_blocking
@pytest.mark.parametrize("name", ["llama", "llama-tied", "qwen2"])
def test_resident_blocked_weights_keep_greedy_tokens(name: str, tmp_path: Path) -> None:
    with resident_runner(name, tmp_path) as (model, runner):
        layer = runner.layers[0]
        assert layer.mlp.gate_proj.weight.dim() == 4
        assert layer.self_attn.k_proj.weight.dim() == 2  # 32 rows: no panel fits
        assert runner.model.get_output_embeddings().weight.dim() == 4
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected


@needs_blocking
def test_a_tied_embedding_reads_the_blocked_head(tmp_path: Path) -> None:
    with resident_runner("llama-tied", tmp_path) as (_, runner):
        embedding = runner.model.get_input_embeddings()
        assert type(embedding) is BlockedEmbedding
        assert embedding.weight is runner.model.get_output_embeddings().weight


@needs_blocking
def test_a_scaled_tied_embedding_keeps_the_head_plain(tmp_path: Path) -> None:
    with resident_runner("gemma3", tmp_path) as (model, runner):
        assert runner.model.get_output_embeddings().weight.dim() == 2
        assert runner.layers[0].mlp.up_proj.weight.dim() == 4
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected


@needs_blocking
def test_no_resident_tensor_is_left_in_the_mapped_file(tmp_path: Path) -> None:
    with resident_runner("llama-tied", tmp_path) as (_, runner):
        checkpoint = runner._checkpoint
        views = [*checkpoint.read_resident(torch.float32, owned=False).values()]
        for index in range(checkpoint.num_layers):
            views += checkpoint.read_layer_whole(index, torch.float32, False).values()
        spans = [(t.data_ptr(), t.data_ptr() + t.nbytes) for t in views]
        for tensor in [*runner.model.parameters(), *runner.model.buffers()]:
            start = tensor.data_ptr()
            assert not any(low <= start < high for low, high in spans)


@needs_blocking
def test_another_order_is_not_taken_for_onednns() -> None:
    found = machine_blocking()
    # Orders with other panels (the depth of a block alone moves nothing).
    others = [Blocking(16, 32), Blocking(16, 16), Blocking(8, 8)]
    for other in (o for o in others if o.rows != found.rows):
        assert not picks(other, (256, 64))
    assert picks(found, (256, 64))


@needs_blocking
def test_a_weight_too_large_to_probe_stays_plain_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A head of 448 x 64 (a shape no other test probes) over a lowered limit.
    monkeypatch.setattr(engine.onednn, "_PROBE_LIMIT", 448 * 64 - 1)
    config = LlamaConfig(**{**SHAPE, "vocab_size": 448}, num_hidden_layers=2)
    with resident_runner(config, tmp_path) as (model, runner):
        assert runner.model.get_output_embeddings().weight.dim() == 2
        assert runner.layers[0].mlp.gate_proj.weight.dim() == 4
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected
