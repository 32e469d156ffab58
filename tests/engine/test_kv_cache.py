"""The block pool: shared prefixes are computed once and never overwritten."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from engine.kv_cache import KVPool, SequenceCache
from tests.engine.test_batching import Collector, make_engine, submit
from tests.engine.tiny_models import CONFIGS, build_model, save_model

BLOCK = 4


def pool(max_blocks: int = 64) -> KVPool:
    return KVPool(1, 1, 2, torch.float32, torch.device("cpu"), max_blocks, BLOCK)


def filled(kv: KVPool, tokens: list[int]) -> SequenceCache:
    cache = SequenceCache(kv)
    cache.reuse_prefix(tokens)
    rest = tokens[cache.length :]
    cache.reserve(len(rest))
    cache.advance(rest)
    return cache


def test_a_shared_prefix_reuses_full_blocks_and_leaves_the_last_token() -> None:
    kv = pool()
    first = filled(kv, list(range(10)))  # blocks of 4: two full, one partial
    second = SequenceCache(kv)
    assert second.reuse_prefix(list(range(10)) + [99]) == 8
    assert second.blocks == first.blocks[:2]
    # Exactly two full blocks: the last token must still be computed.
    assert SequenceCache(kv).reuse_prefix(list(range(8))) == 4


def test_a_different_history_reuses_nothing_after_the_difference() -> None:
    kv = pool()
    filled(kv, list(range(12)))
    other = SequenceCache(kv)
    assert other.reuse_prefix([0, 1, 2, 3, 7, 5, 6, 7, 8, 9, 10, 11, 12]) == 4


def test_held_blocks_are_never_handed_out_and_idle_ones_are_evicted_oldest_first() -> (
    None
):
    kv = pool(max_blocks=3)
    first = filled(kv, list(range(8)))
    first.free()  # both blocks idle, still remembered
    holder = SequenceCache(kv)
    assert holder.reuse_prefix(list(range(9))) == 8
    fresh = SequenceCache(kv)
    fresh.reserve(BLOCK)  # the one blank block
    assert set(fresh.blocks).isdisjoint(holder.blocks)
    with pytest.raises(RuntimeError):
        fresh.reserve(2 * BLOCK)  # only held blocks are left
    holder.free()
    fresh.reserve(2 * BLOCK)  # now the idle ones go, and are forgotten
    assert SequenceCache(kv).reuse_prefix(list(range(9))) == 0


def test_a_block_filled_in_the_coming_sweep_is_shared_at_a_block_boundary() -> None:
    kv = pool()
    filler = SequenceCache(kv)
    filling = filler.filled_by(list(range(10)))  # two full blocks of 4
    assert list(filling.values()) == filler.blocks[:2]
    taker = SequenceCache(kv)
    assert taker.share(list(range(8)) + [50, 51], filling) == 8
    assert taker.blocks == filler.blocks[:2]
    # The last token is always left to compute, for its logits.
    assert SequenceCache(kv).share(list(range(8)), filling) == 4
    # Off a block boundary nothing is taken: the next block would be misaligned.
    partial = SequenceCache(kv)
    partial.reserve(2)
    partial.advance([0, 1])
    assert partial.share(list(range(2, 12)), filling) == 0
    # Freed by the filler, a shared block stays with its takers.
    filler.advance(list(range(10)))
    filler.free()
    assert SequenceCache(kv).reuse_prefix(list(range(9))) == 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(build_model(CONFIGS["llama"]), tmp_path_factory.mktemp("tiny"))


def test_a_request_sharing_a_prompt_computes_less_and_answers_the_same(
    folder: Path, smollm2_tokenizer
) -> None:
    prompt = list(range(40))
    fresh = make_engine(folder, smollm2_tokenizer)
    alone = Collector()
    submit(fresh, prompt, 8, alone)
    expected = alone.text()
    fresh.shutdown()

    engine = make_engine(folder, smollm2_tokenizer)
    texts = []
    for _ in range(2):
        collector = Collector()
        submit(engine, prompt, 8, collector)
        texts.append(collector.text())
    engine.shutdown()
    assert texts == [expected, expected]
    # The second request took the 40-token prompt's two full blocks of 16.
    assert engine.runner.kv_pool.num_reused == 2
    assert engine.totals.tokens == fresh.totals.tokens + 40 - 32 + 7


def test_prompts_arriving_together_compute_a_shared_prefix_once(
    folder: Path, smollm2_tokenizer
) -> None:
    system = list(range(100, 132))  # two full blocks of 16, common to both
    prompts = [system + [5, 6, 7], system + [9, 8]]
    expected = []
    for prompt in prompts:
        alone = make_engine(folder, smollm2_tokenizer)
        collector = Collector()
        submit(alone, prompt, 6, collector)
        expected.append(collector.text())
        alone.shutdown()

    # Both wait before the worker starts, so both run in its first sweep.
    engine = make_engine(folder, smollm2_tokenizer, worker_thread=False)
    collectors = [Collector() for _ in prompts]
    for prompt, collector in zip(prompts, collectors, strict=True):
        submit(engine, prompt, 6, collector)
    worker = threading.Thread(target=engine.run)
    worker.start()
    texts = [collector.text() for collector in collectors]
    engine.stop()
    worker.join()
    engine.runner.close()
    assert texts == expected
    assert engine.runner.kv_pool.num_reused == 2
    first = engine.totals.tokens - 2 * 5  # five decoding feeds each
    assert first == len(prompts[0]) + len(prompts[1]) - len(system)
