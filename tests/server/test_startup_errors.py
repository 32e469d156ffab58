"""The real command on bad start-up input: a non-zero exit and one line naming why.

Each test starts ``python -m server serve`` as its own process, so what is
checked is what a user sees: the exit status and the whole of stderr.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[2]
# Importing torch and transformers takes seconds; failing takes no longer.
RUN_TIMEOUT_S = 60
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _serve(*flags: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSTREAM_")}
    # Runs this checkout's code, whatever copy of the package is installed.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-m", "server", "serve", *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _assert_one_line_naming(
    result: subprocess.CompletedProcess[str], cause: str
) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert cause in result.stderr


@pytest.fixture
def truncated_model(tmp_path: Path, smollm2_dir: Path) -> Path:
    """A tiny Llama folder, complete but for the second half of its weights."""
    folder = tmp_path / "tiny-llama"
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    # A real tokenizer, so that loading gets as far as the weights.
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_dir / name, folder / name)

    weights = folder / "model.safetensors"
    with weights.open("r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    return folder


@pytest.fixture
def busy_port() -> Iterator[str]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield str(holder.getsockname()[1])


def test_missing_model_path_is_named(tmp_path: Path) -> None:
    model = tmp_path / "no-such-model"

    result = _serve("--model", str(model), "--port", _free_port(), cwd=tmp_path)

    _assert_one_line_naming(result, str(model))


def test_folder_without_config_is_named(tmp_path: Path) -> None:
    model = tmp_path / "empty-model"
    model.mkdir()

    result = _serve("--model", str(model), "--port", _free_port(), cwd=tmp_path)

    _assert_one_line_naming(result, str(model))
    assert "config.json" in result.stderr


def test_truncated_weights_name_the_safetensors_file(
    tmp_path: Path, truncated_model: Path
) -> None:
    model = str(truncated_model)

    result = _serve("--model", model, "--port", _free_port(), cwd=tmp_path)

    _assert_one_line_naming(result, str(truncated_model / "model.safetensors"))


def test_port_in_use_is_named(tmp_path: Path, busy_port: str) -> None:
    result = _serve("--port", busy_port, cwd=tmp_path)

    _assert_one_line_naming(result, f"127.0.0.1:{busy_port}")
