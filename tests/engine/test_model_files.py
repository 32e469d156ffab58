"""Bad model files stop the start with an error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint import INDEX_FILE, SINGLE_FILE, Checkpoint
from engine.errors import ModelFileError
from engine.loader import resolve_model
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from tests.engine.tiny_models import CONFIGS, build_model, save_model


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return save_model(build_model(CONFIGS["llama"]), tmp_path / "tiny")


def test_truncated_safetensors_names_the_file(tiny_folder: Path) -> None:
    path = tiny_folder / SINGLE_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated") as caught:
        Checkpoint(tiny_folder)
    assert caught.value.path == str(path)


def test_missing_shard_names_the_shard(tmp_path: Path) -> None:
    save_model(build_model(CONFIGS["llama"]), tmp_path, shard_size="100KB")
    shards = json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"].values()
    missing = tmp_path / sorted(set(shards))[-1]
    missing.unlink()
    with pytest.raises(ModelFileError) as caught:
        Checkpoint(tmp_path)
    assert caught.value.path == str(missing)


def test_missing_layer_tensor_is_named(tiny_folder: Path) -> None:
    path = tiny_folder / SINGLE_FILE
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    config = CONFIGS["llama"]
    with pytest.raises(ModelFileError, match="mlp.up_proj.weight"):
        ModelRunner(
            build_skeleton(config),
            Checkpoint(tiny_folder),
            torch.device("cpu"),
            torch.float32,
            1,
        )


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file") as caught:
        resolve_model(str(tmp_path / "nowhere"), tmp_path, None)
    assert caught.value.path == str(tmp_path / "nowhere")


def test_folder_without_config_is_refused(tiny_folder: Path) -> None:
    (tiny_folder / "config.json").unlink()
    with pytest.raises(ModelFileError, match="no config.json"):
        resolve_model(str(tiny_folder), tiny_folder, None)


def test_pickle_checkpoint_is_refused_with_a_hint(tiny_folder: Path) -> None:
    (tiny_folder / SINGLE_FILE).rename(tiny_folder / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="pytorch_model.bin is a pickle"):
        resolve_model(str(tiny_folder), tiny_folder, None)
