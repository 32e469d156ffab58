"""The KV cache of every running sequence, in blocks of one shared pool.

Each layer keeps one tensor of fixed-size blocks for all sequences, and a
sequence owns a list of block ids. New keys and values of a whole sweep go in
with one indexed copy per layer, and the decoding sequences attend in one call
per layer: their blocks are gathered side by side. Per-sequence caches would
cost one copy of the whole history per token (to append) and one attention
call per sequence per layer.

A block that is full is also remembered by the tokens that led to it: a later
sequence starting with the same tokens (a shared system prompt, the earlier
turns of a chat, the other choices of a request, a preempted sequence coming
back) takes those blocks instead of computing them again. Blocks nobody holds
stay remembered until their room is needed. Prompts that arrive together share
too: a block that one prompt's chunk fills in a sweep is taken by the others of
that sweep that start with the same tokens, since every layer stores the whole
sweep's keys and values before any of its attention reads them.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

import torch

BLOCK_TOKENS = 16
_FIRST_BLOCKS = 64

# What a full block is remembered by: the key of the block before it (its hash)
# and its own tokens, so that equal keys mean equal histories.
BlockKey = tuple[int, tuple[int, ...]]


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
        self.num_reused = 0  # blocks handed to a sequence that did not compute them
        self._block_shape = (block_tokens, kv_heads, head_dim)
        empty = torch.empty(0, *self._block_shape, dtype=dtype, device=device)
        self._keys = [empty] * num_layers  # each [blocks, block_tokens, heads, dim]
        self._values = [empty] * num_layers
        self._holders: list[int] = []  # per block: sequences holding it
        self._blank: list[int] = []  # free, holding nothing worth keeping
        # Free but remembered, oldest first: evicted in that order.
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._by_key: dict[BlockKey, int] = {}
        self._key_of: dict[int, BlockKey] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._keys + self._values)

    @property
    def num_free(self) -> int:
        return len(self._blank) + len(self._idle)

    def allocate(self) -> int:
        """A block for new tokens: a blank one, else the oldest idle one."""
        if not self._blank and not self._idle:
            self._grow()
        if self._blank:
            block = self._blank.pop()
        else:
            block, _ = self._idle.popitem(last=False)
            del self._by_key[self._key_of.pop(block)]
        self._holders[block] = 1
        return block

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self._holders[block] -= 1
            if self._holders[block] > 0:
                continue
            if block in self._key_of:
                self._idle[block] = None
            else:
                self._blank.append(block)

    def remember(self, block: int, key: BlockKey) -> None:
        """Note that a full block holds the history ``key`` names."""
        if key not in self._by_key and block not in self._key_of:
            self._by_key[key] = block
            self._key_of[block] = key

    def reuse(self, key: BlockKey) -> int | None:
        """The block remembered for ``key``, now held once more; None if none."""
        block = self._by_key.get(key)
        if block is None:
            return None
        if self._holders[block] == 0:
            del self._idle[block]
        self._holders[block] += 1
        self.num_reused += 1
        return block

    def hold(self, block: int) -> None:
        """One more sequence holds ``block``, which another fills in this sweep."""
        self._holders[block] += 1
        self.num_reused += 1

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
        # index_select on the flat ids: the same copy as indexing with
        # ``tables``, at a tenth of the cost on the CPU.
        flat = tables.flatten()
        keys = self._keys[layer].index_select(0, flat).view(shape).transpose(1, 2)
        values = self._values[layer].index_select(0, flat).view(shape).transpose(1, 2)
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
        self._blank.extend(range(size - 1, self.num_blocks - 1, -1))
        self._holders.extend([0] * (size - self.num_blocks))
        self.num_blocks = size


class SequenceCache:
    """One sequence's blocks, and the tokens whose keys and values they hold."""

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.blocks: list[int] = []
        self.tokens: list[int] = []
        self._keys: list[BlockKey] = []  # of the full blocks, in order

    @property
    def length(self) -> int:
        return len(self.tokens)

    def reuse_prefix(self, tokens: list[int]) -> int:
        """Take the remembered blocks that start ``tokens``; how many tokens they hold.

        At least the last token is left to compute: its logits are needed.
        """
        self.share(tokens, {})
        return self.length

    def share(self, tokens: list[int], filling: Mapping[BlockKey, int]) -> int:
        """Take the blocks that hold the next ``tokens``; how many tokens they hold.

        A block is either remembered or in ``filling``: filled by another
        sequence in the coming sweep, which then must run this one too. Blocks
        start only at a block boundary with no room reserved past it, and the
        last token is always left to compute: its logits are needed.
        """
        size = self.pool.block_tokens
        if len(self.blocks) * size != self.length:
            return 0
        taken = 0
        while len(tokens) - taken > size:
            key = self._next_key(tokens[taken : taken + size])
            block = filling.get(key)
            if block is not None:
                self.pool.hold(block)
            elif (block := self.pool.reuse(key)) is None:
                break
            self.blocks.append(block)
            self.tokens.extend(key[1])
            self._keys.append(key)
            taken += size
        return taken

    def filled_by(self, tokens: list[int]) -> dict[BlockKey, int]:
        """Blocks that feeding ``tokens`` next fills, by key; their room is reserved."""
        self.reserve(len(tokens))
        size = self.pool.block_tokens
        history = self.tokens + tokens
        filled: dict[BlockKey, int] = {}
        key = self._keys[-1] if self._keys else None
        for index in range(len(self._keys), len(history) // size):
            parent = 0 if key is None else hash(key)
            key = (parent, tuple(history[index * size : (index + 1) * size]))
            filled[key] = self.blocks[index]
        return filled

    def reserve(self, count: int) -> list[int]:
        """Room for ``count`` more tokens; their flat slots in the pool."""
        size = self.pool.block_tokens
        while len(self.blocks) * size < self.length + count:
            self.blocks.append(self.pool.allocate())
        positions = range(self.length, self.length + count)
        return [self.blocks[p // size] * size + p % size for p in positions]

    def advance(self, token_ids: list[int]) -> None:
        """The keys and values of ``token_ids`` are in; remember blocks now full."""
        self.tokens.extend(token_ids)
        size = self.pool.block_tokens
        for index in range(len(self._keys), self.length // size):
            key = self._next_key(self.tokens[index * size : (index + 1) * size])
            self.pool.remember(self.blocks[index], key)
            self._keys.append(key)

    def free(self) -> None:
        self.pool.release(self.blocks)
        self.blocks, self.tokens, self._keys = [], [], []

    def _next_key(self, tokens: list[int]) -> BlockKey:
        parent = hash(self._keys[-1]) if self._keys else 0
        return parent, tuple(tokens)


def _grown(blocks: torch.Tensor, size: int) -> torch.Tensor:
    # Zeros, not garbage: masked positions still meet a zero attention weight
    # in the product with the values, and 0 * NaN would be NaN.
    grown = blocks.new_zeros(size, *blocks.shape[1:])
    grown[: len(blocks)] = blocks
    return grown
