"""Many sequences through one decoder layer call.

The sequences of a sweep are packed side by side into one ``[1, tokens, hidden]``
tensor, so every linear layer runs once for all of them. Only attention must
keep them apart: a cache stand-in hands each sequence's new keys and values to
that sequence's own transformers cache, and an attention function registered
with transformers runs transformers' SDPA attention once per sequence, with the
mask transformers itself built for that sequence. Each sequence therefore sees
exactly the attention it would see alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_ATTENTION = "layerstream_packed"

KeyValue = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Pack:
    """Where each sequence sits in the packed tokens, with its cache and masks."""

    spans: list[slice]
    caches: list[DynamicCache]
    masks: list[dict[str, torch.Tensor | None]]
    layer_types: list[str]
    # Filled by the cache stand-in, read by the attention of the same layer.
    current: list[KeyValue] = field(default_factory=list)


class PackedCache:
    """Stands in for a transformers cache during one packed layer call."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *_, **__
    ) -> KeyValue:
        # keys, values: [1, kv_heads, tokens, head_dim], packed like the hidden states
        pack = self.pack
        pack.current = [
            cache.update(keys[:, :, span], values[:, :, span], layer_idx)
            for span, cache in zip(pack.spans, pack.caches, strict=True)
        ]
        # The packed tensors are not attended over; the attention below uses
        # each sequence's full keys and values from ``pack.current``.
        return keys, values


def packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    pack: Pack,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention per sequence, packed again: ``[1, tokens, heads, dim]``."""
    kind = pack.layer_types[module.layer_idx]
    outputs: list[torch.Tensor | None] = [None] * len(pack.spans)
    is_one_token = [span.stop - span.start == 1 for span in pack.spans]
    decoding = [i for i, one in enumerate(is_one_token) if one]
    prompts = [i for i, one in enumerate(is_one_token) if not one]

    def attend(i: int) -> None:
        keys, values = pack.current[i]
        query_i = query[:, :, pack.spans[i]]
        outputs[i], _ = sdpa_attention_forward(
            module, query_i, keys, values, pack.masks[i][kind], **kwargs
        )

    for i in prompts:
        attend(i)
    # A one-token attention is too small to split across threads: the fork and
    # join of the thread pool cost more than the work, many times per sweep.
    with _single_threaded():
        for i in decoding:
            attend(i)
    return torch.cat(outputs, dim=1), None


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
