"""The benchmark's pure parts: ratios, targets, tables, and the model writer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.big_model import LlamaShape, tokenizer_vocab, write_random_llama
from bench.big_run import BigReport, default_budget
from bench.big_table import render_big
from bench.cli import _fill_defaults, build_parser
from bench.generate_worker import FirstTokenClock, prompt_ids
from bench.http_load import StreamResult, _content
from bench.model_size import INDEX_FILE, measure_model
from bench.prompt import TOPICS, chat_messages
from bench.results import (
    AIRLLM_B1,
    LS_FULL_1,
    LS_PART_1,
    LS_PART_MANY,
    TF_B1,
    TF_B16,
    Limits,
    Report,
    Row,
)
from bench.server_process import Budget
from bench.side_by_side import RunOptions, setups
from bench.table import render
from bench.targets import evaluate

TINY = LlamaShape(hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2)


def _row(key: str, tokens_per_s: float, streams: int = 1, **extra) -> Row:
    # 100 tokens in 100 / tokens_per_s seconds.
    return Row(key, key, "config", streams, 100, 100 / tokens_per_s, **extra)


def _report(*rows: Row) -> Report:
    return Report("model", 32, 16, rows=list(rows))


def _target(report: Report, start: str):
    return next(t for t in evaluate(report) if t.name.startswith(start))


def test_tokens_per_s_is_tokens_over_wall_time() -> None:
    assert Row("k", "s", "c", 1, completion_tokens=64, wall_s=8.0).tokens_per_s == 8.0


def test_a_failed_row_has_no_speed() -> None:
    row = Row("k", "s", "c", 1, completion_tokens=64, wall_s=8.0, error="boom")
    assert row.tokens_per_s is None


def test_one_stream_roofline_is_bandwidth_over_weight_bytes() -> None:
    limits = Limits(500, 100, 10_000.0, 1.0, 1.0)
    assert limits.roofline_tokens_per_s(1) == pytest.approx(20.0)


def test_many_streams_roofline_adds_the_sweeps_arithmetic() -> None:
    # 0.05 s of reading plus 2 * 100 * 16 FLOP at 64,000 FLOP/s = 0.1 s.
    limits = Limits(500, 100, 10_000.0, 1.0, 64_000.0)
    assert limits.roofline_tokens_per_s(16) == pytest.approx(16 / 0.1)


def test_target_passes_at_its_goal() -> None:
    report = _report(_row(LS_PART_1, 12.0), _row(TF_B1, 10.0))
    target = _target(report, "one stream ≥ 1.2×")
    assert (target.measured, target.status) == (pytest.approx(1.2), "PASS")


def test_target_misses_below_its_goal() -> None:
    report = _report(_row(LS_PART_MANY, 80.0, 16), _row(TF_B16, 60.0, 16))
    assert _target(report, "16 streams ≥ 1.5×").status == "MISS"


def test_target_without_its_rows_is_not_applicable() -> None:
    assert _target(_report(_row(LS_PART_1, 10.0)), "one stream ≥ 100×").status == "n/a"


def test_a_failed_row_makes_its_target_not_applicable() -> None:
    airllm = Row(AIRLLM_B1, "AirLLM", "skipped", 1, error="skipped: no python")
    report = _report(_row(LS_PART_1, 10.0), airllm)
    assert _target(report, "one stream ≥ 100×").status == "n/a"


def test_budget_target_needs_budgets_the_server_applied() -> None:
    part = _row(LS_PART_1, 10.0, max_memory=None)
    full = _row(LS_FULL_1, 10.0, max_memory=None)
    target = _target(_report(part, full), "25% budget")
    assert target.status == "n/a" and "no memory budget" in target.note


def test_budget_target_compares_the_two_budgets() -> None:
    part = _row(LS_PART_1, 9.5, max_memory="135MB")
    full = _row(LS_FULL_1, 10.0, max_memory="1076MB")
    assert _target(_report(part, full), "25% budget").status == "PASS"


def test_table_shows_ratio_to_transformers_batch_one() -> None:
    table = render(_report(_row(TF_B1, 10.0), _row(LS_PART_1, 25.0)), [])
    line = next(
        line for line in table.splitlines() if line.startswith(f"| {LS_PART_1}")
    )
    assert "| 2.50× |" in line


def test_table_compares_many_streams_with_the_batch() -> None:
    rows = (_row(TF_B16, 50.0, 16), _row(LS_PART_MANY, 100.0, 16))
    table = render(_report(*rows), [])
    line = next(line for line in table.splitlines() if line.startswith("| layer"))
    assert "| 2.00× |" in line


def test_table_lists_each_target_with_its_result() -> None:
    report = _report(_row(LS_PART_1, 12.0), _row(TF_B1, 10.0))
    table = render(report, evaluate(report))
    assert (
        "| one stream ≥ 1.2× transformers in memory, batch 1 | 1.20× | 1.2× | PASS |"
        in table
    )


def test_table_prints_a_failed_rows_error() -> None:
    failed = Row(TF_B1, "transformers", "batch 1", 1, error="exit 1: out of memory")
    assert "exit 1: out of memory" in render(_report(failed), [])


def test_same_text_accepts_a_shorter_prefix() -> None:
    reference = _row(TF_B1, 10.0, text="The keeper looked at the sea")
    short = _row(AIRLLM_B1, 0.1, text="The keeper")
    table = render(_report(reference, short), [])
    assert "| yes |" in next(line for line in table.splitlines() if "airllm" in line)


def _run_options(fraction: float = 0.25) -> RunOptions:
    return RunOptions(
        folder=Path("model"),
        home=Path("home"),
        tokens=32,
        streams=16,
        budget_fraction=fraction,
        offload_max_memory="150MB",
        airllm_python=None,
        airllm_tokens=4,
        skip=frozenset(),
        timeout_s=60.0,
    )


def test_small_budget_is_the_weights_fraction_plus_the_kv_cache() -> None:
    part, _ = setups(_run_options(0.25), 538_000_000, 66_000_000)
    assert part.spec.budget == Budget("201MB", "66MB")


def test_all_resident_budget_holds_twice_the_weights_plus_the_kv_cache() -> None:
    _, full = setups(_run_options(), 538_000_000, 66_000_000)
    assert full.spec.budget.max_memory == "1142MB"


def test_budget_flags_name_both_shares() -> None:
    flags = Budget("201MB", "66MB").flags()
    assert flags == ["--max-memory", "201MB", "--kv-memory", "66MB"]


def test_big_default_budget_is_far_below_a_7b_model() -> None:
    shape = LlamaShape()
    budget_bytes = int(default_budget(shape, 4).max_memory.removesuffix("MB")) * 10**6
    assert budget_bytes < shape.parameters * 4 / 5


def test_later_sweeps_leave_the_prompts_sweep_out() -> None:
    report = BigReport(TINY, "bfloat16", "model", completion_tokens=4)
    report.ttft_s, report.wall_s = 10.0, 16.0
    assert report.later_sweep_s == 2.0


def test_later_sweeps_of_a_model_larger_than_memory_meet_the_disks_limit() -> None:
    report = BigReport(TINY, "bfloat16", "model", completion_tokens=3)
    report.streamed_bytes, report.memory_bytes = 30 * 10**9, 24 * 10**9
    report.cold_read_bytes_per_s, report.page_cache_read_bytes_per_s = 2e9, 6e9
    report.ttft_s, report.wall_s = 20.0, 50.0  # later sweeps: 15 s, the disk's
    assert report.fits_page_cache is False
    assert "| 100% (of the disk's) |" in render_big(report)


def test_first_token_clock_ignores_the_prompt() -> None:
    clock = FirstTokenClock()
    clock.put(torch.tensor([[1, 2, 3]]))
    assert clock.first_token_at is None
    clock.put(torch.tensor([4]))
    assert clock.first_token_at is not None


def test_role_chunk_has_no_content() -> None:
    chunk = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    assert _content(chunk) == ""


def test_stream_result_keeps_its_tokens() -> None:
    assert StreamResult(0.5, 2.0, 32, "text").completion_tokens == 32


def test_quick_flag_lowers_the_token_counts() -> None:
    args = build_parser().parse_args(["--quick"])
    _fill_defaults(args)
    assert (args.tokens, args.big_layers) == (8, 4)


@pytest.fixture(scope="module")
def tiny_big_model(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big") / "model"
    write_random_llama(folder, TINY, torch.bfloat16, smollm2_dir)
    return folder


def test_written_model_loads_in_transformers_with_every_weight(
    tiny_big_model: Path,
) -> None:
    _, info = AutoModelForCausalLM.from_pretrained(
        tiny_big_model, output_loading_info=True
    )
    assert not (info["missing_keys"] or info["unexpected_keys"])


def test_written_index_maps_every_tensor_to_its_shard(tiny_big_model: Path) -> None:
    index = json.loads((tiny_big_model / INDEX_FILE).read_text())
    found = {}
    for name in set(index["weight_map"].values()):
        with safe_open(str(tiny_big_model / name), framework="pt") as shard:
            found.update(dict.fromkeys(shard.keys(), name))
    assert found == index["weight_map"]


def test_written_index_total_size_is_the_tensor_bytes(
    tiny_big_model: Path, smollm2_dir: Path
) -> None:
    index = json.loads((tiny_big_model / INDEX_FILE).read_text())
    shape = replace(TINY, vocab=tokenizer_vocab(smollm2_dir))
    bf16_bytes = 2 * shape.parameters
    assert index["metadata"]["total_size"] == measure_model(tiny_big_model).file_bytes
    assert index["metadata"]["total_size"] == bf16_bytes


def test_written_model_has_one_layer_per_shard(tiny_big_model: Path) -> None:
    weight_map = json.loads((tiny_big_model / INDEX_FILE).read_text())["weight_map"]
    layers_by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        if ".layers." in key:
            layers_by_shard.setdefault(shard, set()).add(key.split(".")[2])
    assert len(layers_by_shard) == TINY.layers
    assert all(len(layers) == 1 for layers in layers_by_shard.values())


def test_written_vocabulary_is_the_tokenizers(
    tiny_big_model: Path, smollm2_dir: Path
) -> None:
    config = json.loads((tiny_big_model / "config.json").read_text())
    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(smollm2_dir))


def test_every_bench_prompt_has_the_same_length_and_its_own_text(
    smollm2_tokenizer,
) -> None:
    prompts = [
        smollm2_tokenizer.apply_chat_template(
            chat_messages(i),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for i in range(len(TOPICS))
    ]
    assert len({len(ids) for ids in prompts}) == 1
    assert len({tuple(ids) for ids in prompts}) == len(TOPICS)
    assert (
        prompt_ids(smollm2_tokenizer, [chat_messages(i) for i in range(3)]).shape[0]
        == 3
    )
