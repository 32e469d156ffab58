"""``layerstream bench`` (or ``python -m bench``): measure, print, save JSON.

Without ``--big``: layerstream and its anchors side by side on one model, with
this machine's physical limits and the speed targets. With ``--big``: a random
Llama larger than memory, served with a small budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from bench.big_model import SHAPES, LlamaShape, tokenizer_vocab
from bench.big_run import (
    BigOptions,
    BigReport,
    NotEnoughDisk,
    default_budget,
    run_big,
)
from bench.big_table import render_big
from bench.results import Report, row_as_dict
from bench.server_process import Budget
from bench.side_by_side import STAGES, RunOptions, run_side_by_side
from bench.table import render
from bench.targets import Target, evaluate
from engine.kernels import cpu_blocking
from engine.store import pull_default_model

logger = logging.getLogger(__name__)

EXIT_BAD_ARGUMENTS = 2
_QUICK = {
    "tokens": 8,
    "airllm_tokens": 2,
    "big_layers": 4,
    "big_tokens": 3,
    "rounds": 1,
}
_FULL = {
    "tokens": 32, "airllm_tokens": 4, "big_tokens": 4, "rounds": 3,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerstream bench",
        description="Measure layerstream against transformers, accelerate "
        "offload and AirLLM on one model, in one run.",
    )
    add = parser.add_argument
    add("--model", type=Path, help="model folder (default: the embedded model)")
    add("--home", type=Path, help="layerstream's store (default LAYERSTREAM_HOME)")
    add("--tokens", type=int, help="greedy tokens per stream (default 32)")
    add("--streams", type=int, default=16, help="concurrent streams and batch size")
    add("--rounds", type=int, help="rounds of transformers and layerstream (3)")
    add("--quick", action="store_true", help="fewer tokens and layers, for a try")
    add("--budget-fraction", type=float, default=0.25, help="small budget's share")
    add("--offload-max-memory", default="150MB", help="accelerate's CPU budget")
    add("--airllm-python", help="python of a venv where airllm==4.0.0 is installed")
    add("--airllm-tokens", type=int, help="tokens for AirLLM (default 4)")
    add("--skip", default="", help=f"comma-separated stages: {','.join(STAGES)}")
    add("--stage-timeout", type=float, default=900.0, help="seconds per stage")
    add("--json", type=Path, help="also write the results here as JSON")
    add("--log-level", default="info", help="critical ... debug")
    _add_big_flags(parser)
    return parser


def _add_big_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--big", action="store_true", help="serve a random model bigger than memory")
    add("--big-shape", default="7b", choices=sorted(SHAPES), help="Llama shape")
    add("--big-layers", type=int, help="decoder layers (default: the shape's)")
    add("--big-dir", type=Path, help="keep the big model here and reuse it")
    add("--big-tokens", type=int, help="tokens to generate (default 4)")
    add("--big-max-memory", help="budget (default: head, embeddings, KV, three layers)")
    add("--big-dtype", default="bfloat16", choices=("bfloat16", "float16"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _fill_defaults(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    unknown = _skipped(args) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) in --skip: {', '.join(sorted(unknown))}")
    home = args.home or Path(os.environ.get("LAYERSTREAM_HOME", "~/.cache/layerstream"))
    home = home.expanduser()
    if args.big:
        return _big(args, home)
    return _side_by_side(args, home)


def _fill_defaults(args: argparse.Namespace) -> None:
    defaults = _QUICK if args.quick else _FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _skipped(args: argparse.Namespace) -> set[str]:
    return {name.strip() for name in args.skip.split(",") if name.strip()}


def _side_by_side(args: argparse.Namespace, home: Path) -> int:
    options = RunOptions(
        folder=_model_folder(args.model, home),
        home=home,
        tokens=args.tokens,
        streams=args.streams,
        budget_fraction=args.budget_fraction,
        offload_max_memory=args.offload_max_memory,
        airllm_python=args.airllm_python,
        airllm_tokens=args.airllm_tokens,
        skip=frozenset(_skipped(args)),
        timeout_s=args.stage_timeout,
        rounds=args.rounds,
    )
    report = run_side_by_side(options)
    targets = evaluate(report)
    print(render(report, targets))
    if args.json:
        _write_json(args.json, _report_json(report, targets))
    return 0


def _big(args: argparse.Namespace, home: Path) -> int:
    tokenizer_folder = _model_folder(None, home)
    vocab = tokenizer_vocab(tokenizer_folder)
    shape = replace(SHAPES[args.big_shape], vocab=vocab)
    if args.big_layers is not None:
        shape = replace(shape, layers=args.big_layers)
    options = BigOptions(
        shape=shape,
        dtype=getattr(torch, args.big_dtype),
        tokenizer_folder=tokenizer_folder,
        home=home,
        folder=args.big_dir,
        tokens=args.big_tokens,
        budget=_big_budget(args, shape),
        timeout_s=args.stage_timeout,
    )
    try:
        report = run_big(options)
    except NotEnoughDisk as error:
        print(f"layerstream bench: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    print(render_big(report))
    if args.json:
        _write_json(args.json, _big_json(report))
    return 0


def _big_budget(args: argparse.Namespace, shape: LlamaShape) -> Budget:
    if args.big_max_memory is not None:
        return Budget(args.big_max_memory, None)
    return default_budget(shape, args.big_tokens)


def _model_folder(model: Path | None, home: Path) -> Path:
    if model is not None:
        return model.expanduser()
    # The weight order of the CPU, which every measured system runs on.
    return pull_default_model(home, cpu_blocking(torch.device("cpu"), torch.float32))


def _report_json(report: Report, targets: list[Target]) -> dict[str, Any]:
    limits = None
    if report.limits is not None:
        limits = {
            **asdict(report.limits),
            "roofline_tokens_per_s_1": report.limits.roofline_tokens_per_s(1),
            "roofline_tokens_per_s_many": report.limits.roofline_tokens_per_s(
                report.streams
            ),
        }
    return {
        "model": report.model,
        "tokens": report.tokens,
        "streams": report.streams,
        "machine": report.machine,
        "rows": [row_as_dict(row) for row in report.rows],
        "limits": limits,
        "targets": [{**asdict(t), "status": t.status} for t in targets],
        "notes": report.notes,
        "rounds": [[row_as_dict(row) for row in each.rows] for each in report.rounds],
    }


def _big_json(report: BigReport) -> dict[str, Any]:
    return {
        **asdict(report),
        "later_sweep_s": report.later_sweep_s,
        "fits_page_cache": report.fits_page_cache,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    logger.info("results written to %s", path)
