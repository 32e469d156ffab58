"""Runs the model one sweep at a time: embed, every layer, norm, head.

The engine does not call the model's own ``forward``: it walks the decoder
layers itself so that each layer's weights are fetched once per sweep and then
applied to every sequence in the sweep. Within a layer each sequence runs
through transformers' own layer module with its own cache, mask and rotary
embedding, which keeps the numbers equal to transformers' numbers.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import (
    create_causal_mask,
    create_sliding_window_causal_mask,
)

from engine.checkpoint import Checkpoint
from engine.errors import ModelFileError
from engine.prefetch import LayerWeights, Prefetcher
from engine.skeleton import decoder_layers

logger = logging.getLogger(__name__)

_MASK_BUILDERS = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


@dataclass
class SweepInput:
    """One sequence's share of a sweep: its new tokens and its own KV cache."""

    token_ids: list[int]
    cache: DynamicCache


@dataclass
class _Prepared:
    hidden: torch.Tensor  # [1, new_tokens, hidden]
    position_ids: torch.Tensor  # [1, new_tokens]
    masks: dict[str, torch.Tensor | None]
    rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]
    cache: DynamicCache


class ModelRunner:
    def __init__(
        self,
        skeleton: PreTrainedModel,
        checkpoint: Checkpoint,
        device: torch.device,
        dtype: torch.dtype,
        prefetch_depth: int,
    ) -> None:
        self.model = skeleton
        self.config = skeleton.config
        self.device = device
        self.dtype = dtype
        self.layers = decoder_layers(skeleton)
        self.layer_types = _layer_types(self.config, len(self.layers))
        self._checkpoint = checkpoint
        self._rotary_takes_type = _rotary_takes_layer_type(skeleton)

        _check_layer_keys(self.layers, checkpoint)
        self._load_resident(checkpoint)
        self.prefetcher = Prefetcher(
            self._read_layer, list(range(len(self.layers))), prefetch_depth
        )
        self.layer_reads = 0

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def sweep(self, inputs: list[SweepInput]) -> list[torch.Tensor]:
        """Advance every sequence by its new tokens; the last position's logits."""
        prepared = [self._prepare(item) for item in inputs]
        for index, layer in enumerate(self.layers):
            self._run_layer(index, layer, prepared)
        return [self._logits(item.hidden[:, -1:, :]) for item in prepared]

    def close(self) -> None:
        self.prefetcher.close()

    def _run_layer(self, index: int, layer: nn.Module, batch: list[_Prepared]) -> None:
        weights = self.prefetcher.next(index)
        self.layer_reads += 1
        layer.load_state_dict(
            _to_device(weights, self.device), strict=True, assign=True
        )
        try:
            kind = self.layer_types[index]
            for item in batch:
                item.hidden = layer(
                    item.hidden,
                    attention_mask=item.masks[kind],
                    position_embeddings=item.rotary[kind],
                    position_ids=item.position_ids,
                    cache=item.cache,
                )
        finally:
            # Back to meta: the layer's weights are freed as soon as the sweep
            # moves on, so only the prefetcher's few layers stay in memory.
            layer.to("meta")

    def _prepare(self, item: SweepInput) -> _Prepared:
        ids = torch.tensor([item.token_ids], device=self.device)
        hidden = self.model.get_input_embeddings()(ids)
        past = item.cache.get_seq_length()
        positions = torch.arange(past, past + ids.shape[1], device=self.device)
        positions = positions.unsqueeze(0)
        kinds = set(self.layer_types)
        masks = {
            kind: self._mask(kind, hidden, item.cache, positions) for kind in kinds
        }
        rotary = {kind: self._rotary(kind, hidden, positions) for kind in kinds}
        return _Prepared(hidden, positions, masks, rotary, item.cache)

    def _mask(self, kind: str, hidden, cache, positions) -> torch.Tensor | None:
        return _MASK_BUILDERS[kind](
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=None,
            cache=cache,
            position_ids=positions,
        )

    def _rotary(
        self, kind: str, hidden, positions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rotary = self.model.get_decoder().rotary_emb
        if self._rotary_takes_type:
            return rotary(hidden, positions, kind)
        return rotary(hidden, positions)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.model.get_decoder().norm(hidden)
        logits = self.model.get_output_embeddings()(hidden)[0, -1].float()  # [vocab]
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _read_layer(self, index: int) -> LayerWeights:
        return self._checkpoint.read_layer(index, self.dtype)

    def _load_resident(self, checkpoint: Checkpoint) -> None:
        weights = _to_device(checkpoint.read_resident(self.dtype), self.device)
        expected = _resident_keys(self.model)
        missing = expected - weights.keys() - _tied_keys(self.model)
        if missing:
            raise ModelFileError(
                str(checkpoint.folder), f"missing {sorted(missing)[0]}"
            )
        self.model.load_state_dict(weights, strict=False, assign=True)
        if _tied_keys(self.model) - weights.keys():
            output = self.model.get_output_embeddings()
            output.weight = self.model.get_input_embeddings().weight
        for module in self.model.modules():
            for name, buffer in module.named_buffers(recurse=False):
                module.register_buffer(
                    name,
                    buffer.to(self.device),
                    persistent=name not in module._non_persistent_buffers_set,
                )


def _to_device(weights: LayerWeights, device: torch.device) -> LayerWeights:
    return {
        key: tensor.to(device, non_blocking=True) for key, tensor in weights.items()
    }


def _layer_types(config, count: int) -> list[str]:
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


def _rotary_takes_layer_type(model: PreTrainedModel) -> bool:
    rotary = model.get_decoder().rotary_emb
    return "layer_type" in inspect.signature(rotary.forward).parameters


def _resident_keys(model: PreTrainedModel) -> set[str]:
    stack = _stack_prefix(model)
    return {key for key in model.state_dict() if not key.startswith(stack)}


def _tied_keys(model: PreTrainedModel) -> set[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    names = [
        name
        for name, module in model.named_modules()
        if module is model.get_output_embeddings()
    ]
    return {f"{name}.weight" for name in names}


def _stack_prefix(model: PreTrainedModel) -> str:
    layers = decoder_layers(model)
    return (
        next(name for name, module in model.named_modules() if module is layers) + "."
    )


def _check_layer_keys(layers: nn.ModuleList, checkpoint: Checkpoint) -> None:
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
