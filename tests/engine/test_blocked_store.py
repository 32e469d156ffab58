"""A store whose layers are in oneDNN's blocked order: read in place or plain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine.runner
import engine.store
from engine.checkpoint import BLOCKING_KEY, SINGLE_FILE, Checkpoint
from engine.errors import ModelFileError
from engine.onednn import Blocking, machine_blocking
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from engine.store import export_plain, stored_gguf
from tests.engine.test_runner_identity import (
    PROMPTS,
    reference_tokens,
    streamed_tokens,
)
from tests.engine.tiny_models import CONFIGS, build_model, save_model

needs_blocking = pytest.mark.skipif(
    machine_blocking() is None, reason="oneDNN takes no known blocked order here"
)
BLOCKED_KEYS = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "self_attn.q_proj.weight")


def save_blocked(folder: Path, blocking: Blocking) -> None:
    """Rewrite a saved model as the store would: some layer weights blocked."""
    path = folder / SINGLE_FILE
    tensors = load_file(path)
    for key in list(tensors):
        if key.endswith(BLOCKED_KEYS):
            tensors[key] = blocking.block(tensors[key])
    save_file(tensors, path, metadata={BLOCKING_KEY: blocking.name})


def tiny_runner(folder: Path) -> ModelRunner:
    config = CONFIGS["llama"]
    return ModelRunner(
        build_skeleton(config),
        Checkpoint(folder),
        torch.device("cpu"),
        torch.float32,
        2,
    )


@needs_blocking
def test_blocked_layers_are_used_in_place(tmp_path: Path) -> None:
    model = build_model(CONFIGS["llama"])
    save_blocked(save_model(model, tmp_path), machine_blocking())
    runner = tiny_runner(tmp_path)
    try:
        assert runner.in_place_layers == {0, 1, 2}
        mapped = runner._checkpoint.map_layer(0)
        assert mapped["mlp.up_proj.weight"].dim() == 4
        assert mapped["self_attn.k_proj.weight"].dim() == 2
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected
    finally:
        runner.close()


def test_a_runner_that_does_not_block_reads_them_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(CONFIGS["llama"])
    save_blocked(save_model(model, tmp_path), Blocking(inputs=16, rows=64))
    monkeypatch.setattr(engine.runner, "choose_blocking", lambda *_: None)
    runner = tiny_runner(tmp_path)
    try:
        assert not runner.in_place_layers  # staged, and unblocked on the way
        expected = [reference_tokens(model, prompt) for prompt in PROMPTS]
        assert streamed_tokens(runner, PROMPTS) == expected
    finally:
        runner.close()


def test_an_unknown_order_names_the_file(tmp_path: Path) -> None:
    save_model(build_model(CONFIGS["llama"]), tmp_path)
    path = tmp_path / SINGLE_FILE
    save_file(load_file(path), path, metadata={BLOCKING_KEY: "sixteen"})
    with pytest.raises(ModelFileError, match=SINGLE_FILE):
        Checkpoint(tmp_path)


def test_the_plain_export_equals_the_saved_model(tmp_path: Path) -> None:
    model = build_model(CONFIGS["llama"])
    store = save_model(model, tmp_path / "store")
    save_blocked(store, Blocking(inputs=16, rows=64))

    plain = export_plain(store, tmp_path / "plain")

    exported = load_file(plain / SINGLE_FILE)
    assert exported.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert torch.equal(exported[key], tensor), key
    assert (plain / "config.json").is_file()


def test_a_plain_store_exports_as_itself(tmp_path: Path) -> None:
    store = save_model(build_model(CONFIGS["llama"]), tmp_path)
    assert export_plain(store, tmp_path / "plain") == store


def test_a_store_in_another_layout_is_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    converted: list[Blocking | None] = []

    def convert(gguf: Path, out_dir: Path, blocking: Blocking | None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        converted.append(blocking)

    monkeypatch.setattr(engine.store, "convert_gguf", convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    blocking = Blocking(inputs=16, rows=64)

    for wanted in (None, None, blocking, blocking):
        stored_gguf(gguf, tmp_path / "home", wanted)

    assert converted == [None, blocking]
