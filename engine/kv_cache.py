"""The KV cache of every running sequence, in blocks of one shared pool.

Each layer keeps one tensor of fixed-size blocks for all sequences, and a
sequence owns a list of block ids. New keys and values of a whole sweep go in
with one indexed copy per layer, and the decoding sequences attend in one call
per layer: their blocks are gathered side by side and the padding is masked.
Per-sequence caches would cost one copy of the whole history per token (to
append) and one attention call per sequence per layer.
"""

from __future__ import annotations

import torch

BLOCK_TOKENS = 16
_FIRST_BLOCKS = 64


class KVPool:
    """Blocks of keys and values for every layer; grows on demand, up to a cap."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        max_blocks: int,
        block_tokens: int = BLOCK_TOKENS,
    ) -> None:
        self.block_tokens = block_tokens
        self.device = device
        self.max_blocks = max_blocks
        self.num_blocks = 0
        self._block_shape = (block_tokens, kv_heads, head_dim)
        empty = torch.empty(0, *self._block_shape, dtype=dtype, device=device)
        self._keys = [empty] * num_layers  # each [blocks, block_tokens, heads, dim]
        self._values = [empty] * num_layers
        self._free: list[int] = []

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._keys + self._values)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            self._grow()
        return self._free.pop()

    def release(self, blocks: list[int]) -> None:
        self._free.extend(blocks)

    def write(
        self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Store ``keys``, ``values`` ([tokens, heads, dim]) at flat ``slots``."""
        flat = (-1, *self._block_shape[1:])
        self._keys[layer].view(flat).index_copy_(0, slots, keys)
        self._values[layer].view(flat).index_copy_(0, slots, values)

    def gather(
        self, layer: int, tables: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``tables`` ([n, blocks]) as keys, values: [n, heads, tokens, dim]."""
        count, width = tables.shape
        shape = (count, width * self.block_tokens, *self._block_shape[1:])
        keys = self._keys[layer][tables].view(shape).transpose(1, 2)
        values = self._values[layer][tables].view(shape).transpose(1, 2)
        return keys, values

    def _grow(self) -> None:
        if self.num_blocks >= self.max_blocks:
            # The scheduler keeps the tokens within the budget the cap was
            # sized from, so this means a bookkeeping fault, not a full cache.
            raise RuntimeError(f"the KV cache is out of blocks ({self.max_blocks})")
        # Doubling keeps the copies rare: log2 of the final size, all told.
        size = min(max(2 * self.num_blocks, _FIRST_BLOCKS), self.max_blocks)
        self._keys = [_grown(t, size) for t in self._keys]
        self._values = [_grown(t, size) for t in self._values]
        # Reversed, so that pop() hands out the lowest ids first.
        self._free.extend(range(size - 1, self.num_blocks - 1, -1))
        self.num_blocks = size


class SequenceCache:
    """One sequence's blocks, and how many of their tokens are filled."""

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.blocks: list[int] = []
        self.length = 0

    def reserve(self, count: int) -> list[int]:
        """Room for ``count`` more tokens; their flat slots in the pool."""
        size = self.pool.block_tokens
        while len(self.blocks) * size < self.length + count:
            self.blocks.append(self.pool.allocate())
        positions = range(self.length, self.length + count)
        return [self.blocks[p // size] * size + p % size for p in positions]

    def advance(self, count: int) -> None:
        self.length += count

    def free(self) -> None:
        self.pool.release(self.blocks)
        self.blocks = []
        self.length = 0


def _grown(blocks: torch.Tensor, size: int) -> torch.Tensor:
    # Zeros, not garbage: masked positions still meet a zero attention weight
    # in the product with the values, and 0 * NaN would be NaN.
    grown = blocks.new_zeros(size, *blocks.shape[1:])
    grown[: len(blocks)] = blocks
    return grown
