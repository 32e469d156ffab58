"""How a transformers model is laid out, as far as the runner cares.

Which module holds the decoder layers, which keys stay resident, which
attention each layer does, how a streamed layer's weights go in and out of its
modules: knowledge about the model, kept apart from the sweep itself.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from engine.checkpoint import Checkpoint
from engine.errors import ModelFileError, UnsupportedModelError
from engine.packing import PACKED_ATTENTION
from engine.skeleton import decoder_layers

Weights = dict[str, torch.Tensor]


class WeightSlots:
    """Puts a streamed layer's weights into its modules, and takes them out.

    ``load_state_dict`` walks and checks the module tree on every call, which
    costs more than a small layer's compute; the places are found once here
    (the checkpoint's keys were checked against them at start-up).
    """

    def __init__(self, layer: nn.Module) -> None:
        self._places = [
            (layer.get_submodule(owner), leaf, key, param)
            for key, param in layer.named_parameters()
            for owner, _, leaf in [key.rpartition(".")]
        ]

    def fill(self, weights: Weights) -> None:
        for module, leaf, key, _ in self._places:
            module._parameters[leaf] = nn.Parameter(weights[key], requires_grad=False)

    def empty(self) -> None:
        for module, leaf, _, meta in self._places:
            module._parameters[leaf] = meta


def own_mapped(model: nn.Module, mapped: set[int]) -> None:
    """Copy into process memory every tensor that still lies at a ``mapped`` address.

    A tensor shared by two modules (a tied head) stays shared.
    """
    copies: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is None or tensor.data_ptr() not in mapped:
                    continue
                if id(tensor) not in copies:
                    copies[id(tensor)] = _owned_copy(tensor)
                table[name] = copies[id(tensor)]


def _owned_copy(tensor: torch.Tensor) -> torch.Tensor:
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(tensor.detach().clone(), requires_grad=False)
    return tensor.clone()


def use_packed_attention(config: PretrainedConfig) -> None:
    """Layers dispatch to packed attention, which builds its own masks."""
    config._attn_implementation = PACKED_ATTENTION


def attention_windows(
    config: PretrainedConfig, types: list[str]
) -> dict[str, int | None]:
    """Each attention kind the layers use -> its sliding window (None: full)."""
    window = getattr(config, "sliding_window", None)
    known = {"full_attention": None, "sliding_attention": window}
    unknown = set(types) - known.keys()
    if unknown:
        raise UnsupportedModelError(f"attention kind {sorted(unknown)[0]!r}")
    return {kind: known[kind] for kind in sorted(set(types))}


def kv_shape(config: PretrainedConfig) -> tuple[int, int]:
    """Key-value heads and head size."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return getattr(config, "num_key_value_heads", None) or heads, head_dim


def move_buffers(model: nn.Module, device: torch.device) -> None:
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)


def layer_types(config, count: int) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)[:count]
    # Configs without per-layer types (Mistral) slide every layer when a window is set.
    kind = (
        "sliding_attention"
        if getattr(config, "sliding_window", None)
        else "full_attention"
    )
    return [kind] * count


def rotary_takes_layer_type(model: PreTrainedModel) -> bool:
    rotary = model.get_decoder().rotary_emb
    return "layer_type" in inspect.signature(rotary.forward).parameters


def resident_keys(model: PreTrainedModel) -> set[str]:
    stack = stack_prefix(model)
    return {key for key in model.state_dict() if not key.startswith(stack)}


def tied_keys(model: PreTrainedModel) -> set[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    output = model.get_output_embeddings()
    names = [name for name, module in model.named_modules() if module is output]
    return {f"{name}.weight" for name in names}


def stack_prefix(model: PreTrainedModel) -> str:
    layers = decoder_layers(model)
    return (
        next(name for name, module in model.named_modules() if module is layers) + "."
    )


def check_layer_keys(layers: nn.ModuleList, checkpoint: Checkpoint) -> None:
    if checkpoint.num_layers != len(layers):
        raise ModelFileError(
            str(checkpoint.folder),
            f"{checkpoint.num_layers} layers in the checkpoint, "
            f"{len(layers)} in config.json",
        )
    for index, layer in enumerate(layers):
        expected = set(layer.state_dict())
        found = set(checkpoint.layers.get(index, {}))
        if expected != found:
            missing = sorted(expected - found) or sorted(found - expected)
            raise ModelFileError(
                str(checkpoint.folder),
                f"layer {index} does not match the model: {missing[0]}",
            )
