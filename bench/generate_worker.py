"""Timed greedy generation with transformers (in memory or offloaded) or AirLLM.

Runs as a script in a process of its own, so that its peak memory is its own.
It imports nothing from layerstream or from the rest of this package, because
AirLLM runs it with the python of a separate virtual environment; its only
input is one JSON argument and its only output one line starting with
``RESULT_PREFIX``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

RESULT_PREFIX = "BENCH_RESULT "


class FirstTokenClock(BaseStreamer):
    """Notes when generate hands over its first new tokens (after the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        # The first put is the prompt itself; the second carries new tokens.
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def load(spec: dict[str, Any]) -> tuple[Any, Any]:
    folder = spec["folder"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    backend = spec["backend"]
    if backend == "transformers":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    elif backend == "offload":
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=torch.float32,
            device_map="auto",
            max_memory={"cpu": spec["max_memory"]},
            offload_folder=spec["offload_folder"],
        )
    elif backend == "airllm":
        from airllm import AutoModel  # only installed in AirLLM's environment

        model = AutoModel.from_pretrained(folder, device="cpu", dtype=torch.float32)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return model, tokenizer


def prompt_ids(tokenizer: Any, prompts: list[list[dict]]) -> torch.Tensor:
    rows = [
        list(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for messages in prompts
    ]
    # The prompts are chosen to be equally long, so no row needs padding.
    if len({len(row) for row in rows}) != 1:
        raise ValueError("the batch's prompts differ in length")
    return torch.tensor(rows)  # [batch, prompt]


def generate(
    model: Any, tokenizer: Any, ids: torch.Tensor, tokens: int, clock: BaseStreamer
) -> torch.Tensor:
    # min_new_tokens makes every system do the same number of steps even if
    # an end-of-turn token would win early.
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        streamer=clock,
    )


def peak_rss_bytes() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Every run of ``spec["runs"]`` (a batch of chats each); the median by time.

    The text is the first run's first row, the one every system answers.
    """
    started = time.perf_counter()
    model, tokenizer = load(spec)
    load_s = time.perf_counter() - started
    batches = [prompt_ids(tokenizer, chats) for chats in spec["runs"]]

    with torch.inference_mode():
        if spec["warmup_tokens"]:
            warmup = spec["warmup_tokens"]
            generate(model, tokenizer, batches[0], warmup, FirstTokenClock())
        timed = [
            timed_generate(model, tokenizer, ids, spec["tokens"]) for ids in batches
        ]

    median = sorted(timed, key=lambda run: run["wall_s"])[len(timed) // 2]
    return {
        **median,
        "load_s": load_s,
        "runs_wall_s": [run["wall_s"] for run in timed],
        "peak_rss_bytes": peak_rss_bytes(),
        "text": timed[0]["text"],
    }


def timed_generate(
    model: Any, tokenizer: Any, ids: torch.Tensor, tokens: int
) -> dict[str, Any]:
    clock = FirstTokenClock()
    sent = time.perf_counter()
    out = generate(model, tokenizer, ids, tokens, clock)
    wall_s = time.perf_counter() - sent
    new = out[:, ids.shape[1] :]  # [batch, new tokens]
    return {
        "prompt_tokens": ids.shape[1],
        "completion_tokens": int(new.numel()),
        "wall_s": wall_s,
        "ttft_s": None if clock.first_token_at is None else clock.first_token_at - sent,
        "text": tokenizer.decode(new[0], skip_special_tokens=True),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    result = run(json.loads(args[0]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
