"""Many sequences through one decoder layer call.

The sequences of a sweep are packed side by side into one ``[1, tokens, hidden]``
tensor, so every linear layer runs once for all of them. Only attention must
keep them apart. A cache stand-in stores the sweep's new keys and values in the
block pool (``engine.kv_cache``); an attention function registered with
transformers then runs transformers' SDPA attention once for all decoding
sequences of similar length (one token each, their histories gathered side by
side) and once per prompt chunk, each with the mask transformers would build
for that sequence alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from engine.kv_cache import KVPool, SequenceCache

PACKED_ATTENTION = "layerstream_packed"

Masks = dict[str, torch.Tensor]  # attention kind -> boolean mask, True = attend


@dataclass
class Part:
    """Packed tokens that attend together: all decoding ones, or one prompt chunk."""

    rows: torch.Tensor | slice  # where its queries sit among the packed tokens
    tables: torch.Tensor  # [sequences, blocks] block ids, padded
    masks: Masks  # kind -> [sequences, 1, queries, blocks * block_tokens]


@dataclass
class Pack:
    """Where each packed token's keys go, and who attends to what."""

    pool: KVPool
    slots: torch.Tensor  # [tokens] flat pool slot of each packed token
    parts: list[Part]
    layer_types: list[str]


def build_pack(
    pool: KVPool,
    caches: list[SequenceCache],
    counts: list[int],
    windows: dict[str, int | None],
    layer_types: list[str],
) -> Pack:
    """Reserve room for the sweep's tokens and lay out its attention parts.

    ``windows`` maps each attention kind of the model to its sliding window
    (None for full attention). The caches' lengths do not move here: the
    runner advances them once the sweep is done.
    """
    device = pool.device
    slots = [
        s for cache, n in zip(caches, counts, strict=True) for s in cache.reserve(n)
    ]
    parts = [
        _decode_part(pool, caches, counts, group, windows)
        for group in _decode_groups(caches, counts)
    ]
    start = 0
    for cache, count in zip(caches, counts, strict=True):
        if count > 1:
            span = slice(start, start + count)
            parts.append(_prompt_part(pool, cache, span, windows))
        start += count
    return Pack(pool, torch.tensor(slots, device=device), parts, layer_types)


def _decode_groups(caches: list[SequenceCache], counts: list[int]) -> list[list[int]]:
    """Decoding sequences, grouped by how many blocks they hold.

    Within a group every history has the same padded length, so a sequence's
    attention runs the very same arithmetic alone or in company: outputs stay
    batch-invariant, down to the last bit.
    """
    groups: dict[int, list[int]] = {}
    for index, (cache, count) in enumerate(zip(caches, counts, strict=True)):
        if count == 1:
            groups.setdefault(len(cache.blocks), []).append(index)
    return list(groups.values())


def _decode_part(
    pool: KVPool,
    caches: list[SequenceCache],
    counts: list[int],
    decoding: list[int],
    windows: dict[str, int | None],
) -> Part:
    starts = [sum(counts[:i]) for i in decoding]
    tables = [caches[i].blocks for i in decoding]
    width = len(tables[0])
    device = pool.device
    past = torch.tensor([caches[i].length for i in decoding], device=device)
    keys = torch.arange(width * pool.block_tokens, device=device)
    masks = {
        kind: _allowed(past[:, None, None], keys, window)[:, None]
        for kind, window in windows.items()
    }  # kind -> [decoding, 1, 1, keys]
    rows = torch.tensor(starts, device=device)
    if starts == list(range(len(starts))):
        rows = slice(0, len(starts))  # the usual layout: decoding tokens first
    return Part(rows, torch.tensor(tables, device=device), masks)


def _prompt_part(
    pool: KVPool, cache: SequenceCache, span: slice, windows: dict[str, int | None]
) -> Part:
    device = pool.device
    queries = torch.arange(cache.length, cache.length + span.stop - span.start)
    keys = torch.arange(len(cache.blocks) * pool.block_tokens)
    masks = {
        kind: _allowed(queries[:, None], keys, window)[None, None].to(device)
        for kind, window in windows.items()
    }  # kind -> [1, 1, queries, keys]
    return Part(span, torch.tensor([cache.blocks], device=device), masks)


def _allowed(
    query: torch.Tensor, key: torch.Tensor, window: int | None
) -> torch.Tensor:
    # Causal, and within the window when there is one: transformers' own rule
    # (a key is seen while query - window < key <= query).
    allowed = key <= query
    if window is not None:
        allowed &= key > query - window
    return allowed


class PackedCache:
    """Stands in for a transformers cache during one packed layer call."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *_, **__
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # keys, values: [1, kv_heads, tokens, head_dim], packed like the hidden
        # states. The attention below reads them back from the pool.
        pack = self.pack
        pack.pool.write(
            layer_idx, pack.slots, keys[0].transpose(0, 1), values[0].transpose(0, 1)
        )
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
    """Attention per part, packed again: ``[1, tokens, heads, dim]``."""
    layer = module.layer_idx
    kind = pack.layer_types[layer]
    heads, tokens, dim = query.shape[1:]
    out = query.new_empty(tokens, heads, dim)
    for part in pack.parts:
        keys, values = pack.pool.gather(layer, part.tables)
        queries = _queries(query, part)  # [sequences, heads, queries, dim]
        attended, _ = sdpa_attention_forward(
            module, queries, keys, values, part.masks[kind], **kwargs
        )  # [sequences, queries, heads, dim]
        out[part.rows] = attended.flatten(0, 1)
    return out[None], None


def _queries(query: torch.Tensor, part: Part) -> torch.Tensor:
    if part.tables.shape[0] == 1:  # one prompt chunk: its queries side by side
        return query[:, :, part.rows]
    # One query per decoding sequence: the sequences become the batch.
    return query[0][:, part.rows].transpose(0, 1)[:, :, None]


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
