"""A checkpoint's size from its safetensors headers, without reading a weight."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_HEADER_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class ModelSize:
    files: tuple[Path, ...]
    parameters: int
    file_bytes: int  # tensor data as stored

    def bytes_as(self, itemsize: int) -> int:
        """The weights' bytes once converted to a compute dtype of this size."""
        return self.parameters * itemsize


def weight_files(folder: Path) -> tuple[Path, ...]:
    index = folder / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return tuple(folder / name for name in names)
    if (folder / SINGLE_FILE).is_file():
        return (folder / SINGLE_FILE,)
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}")


def measure_model(folder: Path) -> ModelSize:
    files = weight_files(folder)
    parameters = data_bytes = 0
    for path in files:
        for entry in read_header(path).values():
            parameters += math.prod(entry["shape"])
            start, end = entry["data_offsets"]
            data_bytes += end - start
    return ModelSize(files, parameters, data_bytes)


def read_header(path: Path) -> dict[str, dict]:
    """A safetensors file's tensor entries (dtype, shape, data_offsets) by name."""
    with path.open("rb") as file:
        (length,) = _HEADER_LENGTH.unpack(file.read(_HEADER_LENGTH.size))
        header = json.loads(file.read(length))
    header.pop("__metadata__", None)
    return header


def kv_bytes_per_token(folder: Path, itemsize: int) -> int:
    """Keys and values of one token in every layer, from config.json."""
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * itemsize
