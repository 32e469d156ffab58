"""Index a safetensors checkpoint by decoder layer and read it in place.

The checkpoint is never copied: tensors are read straight from the original
files (one ``model.safetensors``, or shards listed by
``model.safetensors.index.json``), one layer at a time.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.errors import ModelFileError

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# "model.layers.7.mlp.up_proj.weight" -> ("model.layers", 7, "mlp.up_proj.weight")
_LAYER_KEY = re.compile(r"^(?P<stack>.*\blayers)\.(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    key: str
    numel: int


class Checkpoint:
    """Where every tensor of a checkpoint lives, grouped as resident or per layer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handles = {path: _open(path) for path in _shard_files(folder)}
        self.resident: dict[str, TensorEntry] = {}
        self.layers: dict[int, dict[str, TensorEntry]] = {}
        self.layer_prefix = ""
        for path, handle in self._handles.items():
            for key in handle.keys():
                self._place(TensorEntry(path, key, _numel(handle, key)))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_numel(self, index: int) -> int:
        return sum(entry.numel for entry in self.layers[index].values())

    @property
    def resident_numel(self) -> int:
        return sum(entry.numel for entry in self.resident.values())

    def read_resident(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {key: self._read(entry, dtype) for key, entry in self.resident.items()}

    def read_layer(self, index: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """One decoder layer's tensors, keyed relative to the layer module."""
        entries = self.layers[index].items()
        return {key: self._read(entry, dtype) for key, entry in entries}

    def _place(self, entry: TensorEntry) -> None:
        match = _LAYER_KEY.match(entry.key)
        if match is None:
            self.resident[entry.key] = entry
            return
        self.layer_prefix = match["stack"]
        layer = self.layers.setdefault(int(match["index"]), {})
        layer[match["rest"]] = entry

    def _read(self, entry: TensorEntry, dtype: torch.dtype) -> torch.Tensor:
        try:
            tensor = self._handles[entry.file].get_tensor(entry.key)
        except SafetensorError as error:
            raise ModelFileError(
                str(entry.file), f"cannot read {entry.key}: {error}"
            ) from error
        # Integer or boolean buffers keep their type; only weights take the dtype.
        return tensor.to(dtype) if tensor.is_floating_point() else tensor


def has_checkpoint(folder: Path) -> bool:
    return (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file()


def _shard_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        return _shards_from_index(index)
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single]
    raise ModelFileError(str(folder), f"no {SINGLE_FILE} or {INDEX_FILE} in the folder")


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelFileError(str(index), f"not a valid index file ({error})") from error
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    for shard in shards:
        if not shard.is_file():
            raise ModelFileError(str(shard), "listed in the index but missing")
    return shards


def _open(path: Path):  # -> safetensors.safe_open handle (untyped in the library)
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        reason = "file is truncated or corrupt" if _looks_truncated(error) else error
        raise ModelFileError(str(path), f"{reason}") from error


def _looks_truncated(error: Exception) -> bool:
    text = str(error)
    return any(sign in text for sign in ("ncomplete", "too small", "not fully covered"))


def _numel(handle, key: str) -> int:
    count = 1
    for size in handle.get_slice(key).get_shape():
        count *= size
    return count
