"""A tiny random Llama behind the real engine and a live HTTP server.

The model's vocabulary is the default model's, so its tokenizer and chat
template work; its answers are noise, which is all these tests need: they
watch requests being admitted, refused, dropped and timed out.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from transformers import LlamaConfig, LlamaForCausalLM

from engine import Engine, EngineOptions, open_engine
from server.app import create_app
from server.settings import Settings

MODEL = "tiny"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
START_TIMEOUT_S = 30.0


def save_tiny_model(folder: Path, smollm2_dir: Path) -> Path:
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=49152,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=None,  # the tokenizer's end token still stops it
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_dir / name, folder / name)
    return folder


def open_tiny_engine(folder: Path, **options: Any) -> Engine:
    return open_engine(
        str(folder), EngineOptions(torch.device("cpu"), torch.float32, **options)
    )


def slow_down(engine: Engine, seconds: float) -> None:
    """Makes each sweep last a while, so tests can act between sweeps."""
    sweep: Callable = engine.runner.sweep

    def slow_sweep(inputs: list) -> list:
        time.sleep(seconds)
        return sweep(inputs)

    engine.runner.sweep = slow_sweep  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(settings: Settings, engine: Engine) -> Iterator[str]:
    """Serves the app on a free port from a thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, engine), port=port, log_config=None, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


def metric(base_url: str, name: str, labels: str = "") -> float:
    """One sample of ``GET /metrics``; ``labels`` as written, e.g. code="x"."""
    text = httpx.get(f"{base_url}/metrics").text
    selector = re.escape(name + (f"{{{labels}}}" if labels else ""))
    found = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for_metric(
    base_url: str, name: str, expected: float, timeout_s: float = 10.0
) -> float:
    """Polls until the metric has the value; returns the last one read."""
    deadline = time.monotonic() + timeout_s
    while (value := metric(base_url, name)) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return value
