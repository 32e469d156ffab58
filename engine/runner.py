"""Runs the model one sweep at a time: embed, every layer, norm, head.

The engine does not call the model's own ``forward``: it walks the decoder
layers itself, so that each layer's weights are fetched once per sweep and
applied to every sequence of the sweep at once (see ``engine.packing``). It
uses transformers' own layer modules, rotary embedding and mask helpers, which
keeps its numbers equal to transformers' numbers.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from engine.checkpoint import Checkpoint
from engine.direct_layer import direct_layer, is_hooked
from engine.errors import ModelFileError
from engine.fusion import fuse_in_place, fuse_resident
from engine.kernels import block_head, block_linears, choose_blocking, use_cpu_kernels
from engine.kv_cache import BLOCK_TOKENS, KVPool, SequenceCache
from engine.layout import (
    Weights,
    WeightSlots,
    attention_windows,
    check_layer_keys,
    kv_shape,
    layer_types,
    move_buffers,
    own_mapped,
    resident_keys,
    rotary_takes_layer_type,
    tied_keys,
    use_packed_attention,
)
from engine.packing import Pack, PackedCache, build_pack
from engine.prefetch import LayerRead, Prefetcher
from engine.skeleton import decoder_layers
from engine.staging import DeviceCopier, StagingPool
from engine.stats import SweepStats
from engine.threads import ThreadChooser, torch_threads

logger = logging.getLogger(__name__)


@dataclass
class SweepInput:
    """One sequence's share of a sweep: its new tokens and its own KV cache."""

    token_ids: list[int]
    cache: SequenceCache
    wants_logits: bool = True  # False for a prompt chunk that is not the last
    wants_hidden: bool = False  # an embedding's chunk: every token's final state


@dataclass(frozen=True)
class SweepOutput:
    """What a sweep computed for one input; None where it was not asked for."""

    logits: torch.Tensor | None = None  # [vocab], float32, of the last token
    hidden: torch.Tensor | None = None  # [tokens, hidden], float32, after the norm


@dataclass
class _Batch:
    hidden: torch.Tensor  # [1, tokens, hidden], all sequences side by side
    positions: torch.Tensor  # [1, tokens]
    rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]
    pack: Pack


class ModelRunner:
    def __init__(
        self,
        skeleton: PreTrainedModel,
        checkpoint: Checkpoint,
        device: torch.device,
        dtype: torch.dtype,
        prefetch_depth: int,
        resident_layers: frozenset[int] = frozenset(),
    ) -> None:
        self.model = skeleton
        self.config = skeleton.config
        self.device = device
        self.dtype = dtype
        self.layers = decoder_layers(skeleton)
        self.layer_types = layer_types(self.config, len(self.layers))
        self._windows = attention_windows(self.config, self.layer_types)
        self.resident_layers = resident_layers
        self._checkpoint = checkpoint
        self._rotary_takes_type = rotary_takes_layer_type(skeleton)
        use_packed_attention(self.config)
        self.linear_kernel = use_cpu_kernels(skeleton, device, dtype)
        # Resident weights are blocked as they are copied in; streamed ones
        # are used as the checkpoint holds them (blocked in the engine's store).
        self.blocking = choose_blocking(skeleton, self.linear_kernel)
        self.kv_pool = _kv_pool(self.config, len(self.layers), dtype, device)

        check_layer_keys(self.layers, checkpoint)
        self._slots = [WeightSlots(layer) for layer in self.layers]
        self._direct = [direct_layer(layer) for layer in self.layers]
        self._load_resident(checkpoint)
        streamed = [i for i in range(len(self.layers)) if i not in resident_layers]
        # On the CPU a layer stored in the compute dtype needs no copy at all.
        self.in_place_layers = {
            i for i in streamed
            if device.type == "cpu" and checkpoint.is_stored_as(i, dtype)
            and checkpoint.is_laid_out_for(i, self.blocking)
        }  # fmt: skip
        # Queued, being read, being computed: that many buffers, never more.
        staged = [i for i in streamed if i not in self.in_place_layers]
        buffers = prefetch_depth + 2 if staged else 0
        self._pool = StagingPool(buffers, checkpoint.staged_nbytes(dtype), device)
        self._copier = DeviceCopier(device)
        # A layer used in place needs no reading thread: its views cost
        # microseconds, and handing them over through a queue cost the compute
        # more than that.
        self.prefetcher = Prefetcher(self._read_layer, staged, prefetch_depth)
        for index in sorted(self.in_place_layers):
            checkpoint.map_layer(index)  # pages mapped in once, at start-up
        self._fuse_in_place(checkpoint)
        self.layer_reads = 0
        self.last_sweep = SweepStats()
        # On a GPU the host threads only launch kernels: their number is left be.
        self._threads = ThreadChooser(torch.get_num_threads(), device.type == "cpu")

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def new_cache(self) -> SequenceCache:
        return SequenceCache(self.kv_pool)

    def cap_kv(self, tokens: int, sequences: int) -> None:
        """Bound the KV pool by the scheduler's budget (plus a block per sequence)."""
        self.kv_pool.max_blocks = -(-tokens // BLOCK_TOKENS) + sequences

    @torch.inference_mode()
    def sweep(self, inputs: list[SweepInput]) -> list[SweepOutput]:
        """Advance every sequence by its new tokens; what each input asked for."""
        stats = SweepStats(len(inputs), sum(len(item.token_ids) for item in inputs))
        threads = self._threads.choose(stats.tokens)
        started = time.perf_counter()
        with torch_threads(threads):
            batch = self._pack(inputs)
            for index, layer in enumerate(self.layers):
                self._run_layer(index, layer, batch, stats)
            logits = self._logits(batch, inputs)
            hidden = self._final_hidden(batch, inputs)
        took = time.perf_counter() - started
        # Embedding, packing and the head are computing too: the head alone is
        # a tenth of a small model's sweep.
        stats.compute_s = took - stats.wait_s
        self._threads.record(stats.tokens, threads, took)
        for item in inputs:
            item.cache.advance(item.token_ids)
        self.last_sweep = stats
        return [SweepOutput(*pair) for pair in zip(logits, hidden, strict=True)]

    def close(self) -> None:
        self.prefetcher.close()

    def _run_layer(
        self, index: int, layer: nn.Module, batch: _Batch, stats: SweepStats
    ) -> None:
        if index in self.resident_layers:
            self._forward(index, layer, batch)
            return

        waited = time.perf_counter()
        read = self._take_layer(index)
        stats.wait_s += time.perf_counter() - waited
        stats.layers_streamed += 1
        stats.bytes_streamed += read.nbytes
        self.layer_reads += 1
        slots = self._slots[index]
        try:
            DeviceCopier.wait(read.tensors, read.copied)
            slots.fill(read.tensors)
            self._forward(index, layer, batch)
        finally:
            # Back to meta and the buffer back to the pool: only the layers in
            # flight stay in memory, whatever the model's depth.
            slots.empty()
            read.release()

    def _forward(self, index: int, layer: nn.Module, batch: _Batch) -> None:
        kind = self.layer_types[index]
        direct = self._direct[index]
        if direct is not None and not is_hooked(layer):
            batch.hidden = direct(batch.hidden, batch.rotary[kind], batch.pack)
            return
        batch.hidden = layer(
            batch.hidden,
            attention_mask=None,  # each sequence's own mask travels in the pack
            position_embeddings=batch.rotary[kind],
            position_ids=batch.positions,
            cache=PackedCache(batch.pack),
            pack=batch.pack,
        )

    def _pack(self, inputs: list[SweepInput]) -> _Batch:
        ids = [token for item in inputs for token in item.token_ids]
        hidden = self.model.get_input_embeddings()(
            torch.tensor([ids], device=self.device)
        )  # [1, tokens, hidden]
        positions = torch.tensor(
            [p for item in inputs for p in _positions(item)], device=self.device
        )[None]  # [1, tokens]
        rotary = {kind: self._rotary(kind, hidden, positions) for kind in self._windows}
        pack = build_pack(
            self.kv_pool,
            [item.cache for item in inputs],
            [len(item.token_ids) for item in inputs],
            self._windows,
            self.layer_types,
        )
        return _Batch(hidden, positions, rotary, pack)

    def _rotary(
        self, kind: str, hidden, positions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rotary = self.model.get_decoder().rotary_emb
        if self._rotary_takes_type:
            return rotary(hidden, positions, kind)
        return rotary(hidden, positions)

    def _logits(
        self, batch: _Batch, inputs: list[SweepInput]
    ) -> list[torch.Tensor | None]:
        wanted = [i for i, item in enumerate(inputs) if item.wants_logits]
        if not wanted:
            return [None] * len(inputs)
        ends = itertools.accumulate(len(item.token_ids) for item in inputs)
        last = [end - 1 for end in ends]
        rows = torch.tensor([last[i] for i in wanted])
        hidden = self.model.get_decoder().norm(batch.hidden[:, rows.to(self.device)])
        logits = self.model.get_output_embeddings()(hidden)[
            0
        ].float()  # [wanted, vocab]
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        out: list[torch.Tensor | None] = [None] * len(inputs)
        for row, index in enumerate(wanted):
            out[index] = logits[row]
        return out

    def _final_hidden(
        self, batch: _Batch, inputs: list[SweepInput]
    ) -> list[torch.Tensor | None]:
        """The normed hidden state of every token, for the inputs that want it."""
        out: list[torch.Tensor | None] = [None] * len(inputs)
        if not any(item.wants_hidden for item in inputs):
            return out  # the usual sweep: nothing to compute
        norm = self.model.get_decoder().norm
        start = 0
        for index, item in enumerate(inputs):
            end = start + len(item.token_ids)
            if item.wants_hidden:
                out[index] = norm(batch.hidden[0, start:end]).float()
            start = end
        return out

    def _take_layer(self, index: int) -> LayerRead:
        if index not in self.in_place_layers:
            return self.prefetcher.next(index)
        nbytes = self._checkpoint.layer_nbytes(index)
        return LayerRead(self._checkpoint.map_layer(index), nbytes, None, _nothing)

    def _read_layer(self, index: int) -> LayerRead:
        """Runs on the prefetch thread: disk or page cache -> buffer -> device."""
        nbytes = self._checkpoint.layer_nbytes(index)
        buffer = self._pool.take()
        try:
            host = self._checkpoint.read_layer(index, self.dtype, buffer)
            tensors, copied = self._copier.copy(host)
        except BaseException:
            self._pool.give(buffer, None)
            raise
        return LayerRead(
            tensors, nbytes, copied, lambda: self._pool.give(buffer, copied)
        )

    def _on_device(self, weights: Weights) -> Weights:
        return {key: t.to(self.device, non_blocking=True) for key, t in weights.items()}

    def _load_resident(self, checkpoint: Checkpoint) -> None:
        # With blocking, the weights are read in place and then copied once,
        # straight into the blocked order; whatever stays plain is copied
        # after. Copying first would hold the head twice for a moment.
        owned = self.blocking is None
        weights = self._on_device(checkpoint.read_resident(self.dtype, owned))
        expected = resident_keys(self.model)
        missing = expected - weights.keys() - tied_keys(self.model)
        if missing:
            raise ModelFileError(
                str(checkpoint.folder), f"missing {sorted(missing)[0]}"
            )
        self.model.load_state_dict(weights, strict=False, assign=True)
        if tied_keys(self.model) - weights.keys():
            output = self.model.get_output_embeddings()
            output.weight = self.model.get_input_embeddings().weight
        in_place = {t.data_ptr() for t in weights.values()}
        for index in sorted(self.resident_layers):
            layer = checkpoint.read_layer_whole(index, self.dtype, owned)
            self.layers[index].load_state_dict(
                self._on_device(layer), strict=True, assign=True
            )
            in_place.update(t.data_ptr() for t in layer.values())
        move_buffers(self.model, self.device)
        if self.blocking is not None:
            self._block_resident()
            own_mapped(self.model, in_place)

    def _block_resident(self) -> None:
        blocking = self.blocking
        head = block_head(self.model, blocking)
        fused = 0
        for index in self.resident_layers:
            block_linears(self.layers[index], blocking)
            fused += fuse_resident(self.layers[index])
        logger.info(
            "resident weights in oneDNN's %s order (%d layers%s), %d fused groups",
            blocking.name, len(self.resident_layers), ", the head" if head else "",
            fused,
        )  # fmt: skip

    def _fuse_in_place(self, checkpoint: Checkpoint) -> None:
        if self.blocking is None:
            return
        fused = sum(
            fuse_in_place(self.layers[index], index, checkpoint)
            for index in self.in_place_layers
        )
        logger.info("streamed layers used in place with %d fused groups", fused)


def _positions(item: SweepInput) -> range:
    return range(item.cache.length, item.cache.length + len(item.token_ids))


def _kv_pool(
    config, num_layers: int, dtype: torch.dtype, device: torch.device
) -> KVPool:
    kv_heads, head_dim = kv_shape(config)
    # Uncapped until the engine gives its budget (``cap_kv``).
    return KVPool(num_layers, kv_heads, head_dim, dtype, device, max_blocks=2**62)


def _nothing() -> None:
    """Releases a layer used in place: its pages belong to the page cache."""
