"""A random-weight Llama of a standard shape, written one layer at a time.

A model bigger than memory is needed to show that layerstream serves one, and
none can be downloaded here; its numbers need not mean anything, only its
size and shape. Every decoder layer goes to a shard of its own, with the
embeddings first and the final norm and output head last, so that no more than
one layer's tensors are ever held in memory while writing.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig

from bench.model_size import INDEX_FILE

logger = logging.getLogger(__name__)

_INIT_STD = 0.02  # small enough that activations of random layers stay finite
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class LlamaShape:
    """Llama-2 7B's shape by default."""

    hidden: int = 4096
    intermediate: int = 11008
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    vocab: int = 32000

    def layer_shapes(self) -> Shapes:
        kv_width = self.kv_heads * (self.hidden // self.heads)
        h, i = self.hidden, self.intermediate
        return {
            "input_layernorm.weight": (h,),
            "self_attn.q_proj.weight": (h, h),
            "self_attn.k_proj.weight": (kv_width, h),
            "self_attn.v_proj.weight": (kv_width, h),
            "self_attn.o_proj.weight": (h, h),
            "post_attention_layernorm.weight": (h,),
            "mlp.gate_proj.weight": (i, h),
            "mlp.up_proj.weight": (i, h),
            "mlp.down_proj.weight": (h, i),
        }

    @property
    def layer_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.layer_shapes().values())

    @property
    def outer_parameters(self) -> int:
        """Embeddings, final norm and an untied output head."""
        return 2 * self.vocab * self.hidden + self.hidden

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.outer_parameters


# Llama-2's shapes; the vocabulary becomes the tokenizer's when written. 13B
# stored as bfloat16 (26 GB) is larger than a 24 GB machine's whole memory.
SHAPES = {
    "7b": LlamaShape(),
    "13b": LlamaShape(
        hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40
    ),
}


def tokenizer_vocab(tokenizer_folder: Path) -> int:
    return len(AutoTokenizer.from_pretrained(tokenizer_folder))


def write_random_llama(
    folder: Path,
    shape: LlamaShape,
    dtype: torch.dtype,
    tokenizer_folder: Path,
    seed: int = 0,
) -> int:
    """Writes the model into an empty or new folder; returns its weight bytes."""
    shape = replace(shape, vocab=tokenizer_vocab(tokenizer_folder))
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    shards = list(shard_shapes(shape))
    weight_map: dict[str, str] = {}
    total = 0
    for number, shapes in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {key: _random(size, dtype, generator) for key, size in shapes.items()}
        save_file(tensors, folder / name, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        logger.info("wrote %s (%d/%d)", name, number, len(shards))
        del tensors  # freed before the next shard's are made

    _write_config(folder, shape, dtype, tokenizer_folder)
    _copy_tokenizer(tokenizer_folder, folder)
    # Last, so that a folder with an index holds a finished model.
    _write_index(folder, weight_map, total)
    return total


def shard_shapes(shape: LlamaShape) -> Iterator[Shapes]:
    """Each shard's tensor names and shapes, in the order they are written."""
    yield {"model.embed_tokens.weight": (shape.vocab, shape.hidden)}
    for index in range(shape.layers):
        prefix = f"model.layers.{index}."
        yield {prefix + key: size for key, size in shape.layer_shapes().items()}
    yield {
        "model.norm.weight": (shape.hidden,),
        "lm_head.weight": (shape.vocab, shape.hidden),
    }


def _random(
    size: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    if len(size) == 1:  # RMSNorm weights start at one
        return torch.ones(size, dtype=dtype)
    return torch.empty(size, dtype=dtype).normal_(0.0, _INIT_STD, generator=generator)


def _write_index(folder: Path, weight_map: dict[str, str], total: int) -> None:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))


def _write_config(
    folder: Path, shape: LlamaShape, dtype: torch.dtype, tokenizer_folder: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["LlamaForCausalLM"],
        dtype=dtype,
    )
    config.save_pretrained(folder)


def _copy_tokenizer(source: Path, target: Path) -> None:
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
