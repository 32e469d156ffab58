"""Llama decoder layers run function by function, past the module plumbing.

Calling a layer goes through ``nn.Module.__call__`` a dozen times (the layer,
attention, projections, norms, MLP, activation) and through transformers'
keyword handling and attention lookup. At sixteen tokens that plumbing took
about 2.4 ms of a 55 ms sweep of the default model on a 2-core EPYC. For the
layer classes known here the runner calls the submodules' own ``forward`` in
the order transformers' layer does, so every operation, and every output bit,
is the same (tested against the layer itself); other models keep the layer's
own call, and so does a layer with hooks on its call.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    apply_rotary_pos_emb,
)

from engine.packing import Pack, PackedCache, packed_attention

Rotary = tuple[torch.Tensor, torch.Tensor]  # cos, sin: [1, tokens, head_dim]
DirectLayer = Callable[[torch.Tensor, Rotary, Pack], torch.Tensor]


def direct_layer(layer: nn.Module) -> DirectLayer | None:
    """The layer as one function of (hidden, rotary, pack), when its kind is known."""
    parts = (
        (layer, LlamaDecoderLayer),
        (getattr(layer, "self_attn", None), LlamaAttention),
        (getattr(layer, "mlp", None), LlamaMLP),
        (getattr(layer, "input_layernorm", None), LlamaRMSNorm),
        (getattr(layer, "post_attention_layernorm", None), LlamaRMSNorm),
    )
    # Exact classes: a subclass may change any step.
    if any(type(module) is not kind for module, kind in parts):
        return None
    return partial(_llama_layer, layer)


def is_hooked(layer: nn.Module) -> bool:
    """Whether hooks wait on the layer's call, which the direct path would skip."""
    hooks = (
        layer._forward_pre_hooks,
        layer._forward_hooks,
        module_hooks._global_forward_pre_hooks,
        module_hooks._global_forward_hooks,
    )
    return any(hooks)


def _llama_layer(
    layer: LlamaDecoderLayer, hidden: torch.Tensor, rotary: Rotary, pack: Pack
) -> torch.Tensor:
    # hidden: [1, tokens, hidden_size], the sweep's tokens packed side by side
    attention = layer.self_attn
    residual = hidden
    normed = layer.input_layernorm.forward(hidden)
    heads = (*normed.shape[:-1], -1, attention.head_dim)
    query = attention.q_proj.forward(normed).view(heads).transpose(1, 2)
    key = attention.k_proj.forward(normed).view(heads).transpose(1, 2)
    value = attention.v_proj.forward(normed).view(heads).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, *rotary)
    PackedCache(pack).update(key, value, attention.layer_idx)
    attended, _ = packed_attention(
        attention, query, key, value, None, pack=pack, scaling=attention.scaling
    )
    attended = attended.reshape(*normed.shape[:-1], -1).contiguous()
    hidden = residual + attention.o_proj.forward(attended)

    residual = hidden
    mlp = layer.mlp
    normed = layer.post_attention_layernorm.forward(hidden)
    gate = mlp.act_fn.forward(mlp.gate_proj.forward(normed))
    return residual + mlp.down_proj.forward(gate * mlp.up_proj.forward(normed))
