"""Tiny random models of each supported architecture, saved as checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

from engine.checkpoint import Checkpoint
from engine.engine import Engine
from engine.options import EngineOptions
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton

SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=320,
    max_position_embeddings=256,
    # No end token: generate() then runs the full length, as the test loop does.
    eos_token_id=None,
)

CONFIGS: dict[str, PretrainedConfig] = {
    "llama": LlamaConfig(**SHAPE, num_hidden_layers=3, tie_word_embeddings=False),
    "llama-tied": LlamaConfig(**SHAPE, num_hidden_layers=3, tie_word_embeddings=True),
    "qwen2": Qwen2Config(**SHAPE, num_hidden_layers=3, tie_word_embeddings=False),
    "qwen3": Qwen3Config(**SHAPE, num_hidden_layers=3, head_dim=16),
    "mistral": MistralConfig(**SHAPE, num_hidden_layers=3, sliding_window=None),
    "gemma3": Gemma3TextConfig(
        **SHAPE,
        num_hidden_layers=3,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    ),
}


def build_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random init leaves norms at one and logits nearly flat; widen the spread so
    # greedy choices are decided by the weights, not by rounding.
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def save_model(
    model: PreTrainedModel, folder: Path, shard_size: str | None = None
) -> Path:
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


def engine_on(
    folder: Path,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    max_batch: int,
    kv_tokens: int | None = None,
) -> Engine:
    """The real engine over a saved checkpoint, with no end-of-text token.

    Built by hand rather than by ``open_engine``, so the tokenizer can be any
    (the default model's, for its chat template) and answers run to their cap.
    """
    options = EngineOptions(torch.device("cpu"), torch.float32, max_batch=max_batch)
    runner = ModelRunner(
        build_skeleton(AutoConfig.from_pretrained(folder)),
        Checkpoint(folder),
        options.device,
        options.dtype,
        options.prefetch_depth,
    )
    return Engine(name, tokenizer, runner, options, frozenset(), kv_tokens)
