"""Index a safetensors checkpoint by decoder layer and read it in place.

The checkpoint is never copied on disk: tensors are read straight from the
original files (one ``model.safetensors``, or shards listed by
``model.safetensors.index.json``). Streamed layers are read into staging
buffers the engine reuses; resident parts are copied once into the process's
own memory, so that the kernel cannot evict them.

The engine's own store (a converted GGUF file) may hold the layers' linear
weights in oneDNN's blocked order (``engine.onednn``), as four-dimensional
tensors, named by ``BLOCKING_KEY`` in the file's metadata. Read in place they
stay blocked; read any other way they come out plain, as the model expects.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ModelFileError
from engine.onednn import Blocking, plain_shape
from engine.tensorfile import TensorFile

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BLOCKING_KEY = "layerstream.blocking"

# "model.layers.7.mlp.up_proj.weight" -> ("model.layers", 7, "mlp.up_proj.weight")
_LAYER_KEY = re.compile(r"^(?P<stack>.*\blayers)\.(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    key: str
    numel: int
    nbytes: int  # as stored on disk
    blocking: Blocking | None = None  # stored blocked, four-dimensional


class Checkpoint:
    """Where every tensor of a checkpoint lives, grouped as resident or per layer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files = {path: TensorFile(path) for path in _shard_files(folder)}
        self.resident: dict[str, TensorEntry] = {}
        self.layers: dict[int, dict[str, TensorEntry]] = {}
        self._mapped: set[int] = set()  # layers whose pages were mapped in
        for path, mapped in self._files.items():
            blocking = _file_blocking(mapped)
            for key, info in mapped.tensors.items():
                nbytes = info.end - info.start
                blocked = blocking if len(info.shape) == 4 else None
                self._place(TensorEntry(path, key, info.numel, nbytes, blocked))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_numel(self, index: int) -> int:
        return sum(entry.numel for entry in self.layers[index].values())

    def layer_nbytes(self, index: int) -> int:
        return sum(entry.nbytes for entry in self.layers[index].values())

    @property
    def resident_numel(self) -> int:
        return sum(entry.numel for entry in self.resident.values())

    def is_laid_out_for(self, index: int, blocking: Blocking | None) -> bool:
        """Whether the layer, used in place, suits a runner that blocks as given."""
        return all(
            entry.blocking in (None, blocking) for entry in self.layers[index].values()
        )

    def blocked_group(self, index: int, keys: list[str]) -> torch.Tensor | None:
        """Blocked weights of one layer that lie end to end, as one blocked weight.

        Blocked panels follow one another, so weights of the same input size
        side by side are the blocked order of their concatenation.
        """
        entries = [self.layers[index][key] for key in keys]
        files = {entry.file for entry in entries}
        shapes = [self._info(entry).shape for entry in entries]
        blockings = {entry.blocking for entry in entries}
        if len(files) != 1 or None in blockings or len(blockings) != 1:
            return None
        if len({shape[1:] for shape in shapes}) != 1:
            return None
        flat = self._files[files.pop()].span([entry.key for entry in entries])
        if flat is None:
            return None
        panels = sum(shape[0] for shape in shapes)
        return flat.view(panels, *shapes[0][1:])

    def read_resident(
        self, dtype: torch.dtype, owned: bool = True
    ) -> dict[str, torch.Tensor]:
        """The tensors outside the layers; in place in the files unless ``owned``."""
        read = _owned if owned else _typed
        return {key: read(self._plain(e), dtype) for key, e in self.resident.items()}

    def read_layer_whole(
        self, index: int, dtype: torch.dtype, owned: bool = True
    ) -> dict[str, torch.Tensor]:
        """A layer to keep resident: copied into process memory unless not ``owned``.

        In place, the caller copies the tensors itself (into another order,
        say) before the kernel may evict their pages.
        """
        read = _owned if owned else _typed
        entries = self.layers[index].items()
        return {key: read(self._plain(entry), dtype) for key, entry in entries}

    def staged_nbytes(self, dtype: torch.dtype) -> int:
        """A staging buffer's size: the largest layer, its weights as ``dtype``."""
        return max(
            (sum(self._staged(entry, dtype) for entry in entries.values())
             for entries in self.layers.values()),
            default=0,
        )  # fmt: skip

    def is_stored_as(self, index: int, dtype: torch.dtype) -> bool:
        return all(
            self._info(entry).dtype == dtype for entry in self.layers[index].values()
        )

    def map_layer(self, index: int) -> dict[str, torch.Tensor]:
        """A layer in place in the mapped files, its pages mapped in on first use.

        Blocked weights stay blocked (``is_laid_out_for`` says who takes them).

        Only the first time: the mapping then stays, and asking again costs the
        compute about a third of a sweep (the call holds the GIL while it walks
        the pages). Pages the kernel evicts later fault back in on the compute
        side; a float32 model larger than the page cache pays that.
        """
        entries = self.layers[index]
        if index not in self._mapped:
            for entry in entries.values():
                self._files[entry.file].populate(entry.key)
            self._mapped.add(index)
        return {key: self._view(entry) for key, entry in entries.items()}

    def read_layer(
        self, index: int, dtype: torch.dtype, buffer: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """A streamed layer copied into ``buffer``, keyed as in the layer module.

        ``buffer`` holds ``staged_nbytes(dtype)`` bytes; every tensor lands in
        it as ``dtype`` (a blocked one unblocked), so a sweep allocates nothing.
        The copy reads the mapped file: a stored tensor crosses memory once,
        converted on the way, and while the copy converts what has arrived the
        kernel's read-ahead of the mapping keeps the disk busy. (Reading into a
        scratch buffer first and converting after ran at 60% of the disk's rate
        on a cold page cache and half the page cache's rate on a warm one.)
        """
        tensors, offset = {}, 0
        for key, entry in self.layers[index].items():
            info = self._info(entry)
            target = _target_dtype(info.dtype, dtype)
            size = info.numel * target.itemsize
            slot = buffer[offset : offset + size].view(target)
            tensors[key] = self._copy_into(entry, slot)
            offset += _aligned(size)
        return tensors

    def _copy_into(self, entry: TensorEntry, slot: torch.Tensor) -> torch.Tensor:
        stored = self._view(entry)
        if entry.blocking is None:
            return slot.view(stored.shape).copy_(stored)
        plain = slot.view(plain_shape(stored.shape))
        entry.blocking.unblock_into(stored, plain)
        return plain

    def _staged(self, entry: TensorEntry, dtype: torch.dtype) -> int:
        info = self._info(entry)
        return _aligned(info.numel * _target_dtype(info.dtype, dtype).itemsize)

    def _info(self, entry: TensorEntry):  # -> engine.tensorfile.TensorInfo
        return self._files[entry.file].tensors[entry.key]

    def _view(self, entry: TensorEntry) -> torch.Tensor:
        return self._files[entry.file].tensor(entry.key)

    def _plain(self, entry: TensorEntry) -> torch.Tensor:
        """The tensor as the model has it: a blocked one comes out as a copy."""
        view = self._view(entry)
        return view if entry.blocking is None else entry.blocking.unblock(view)

    def _place(self, entry: TensorEntry) -> None:
        match = _LAYER_KEY.match(entry.key)
        if match is None:
            self.resident[entry.key] = entry
            return
        layer = self.layers.setdefault(int(match["index"]), {})
        layer[match["rest"]] = entry


def _file_blocking(mapped: TensorFile) -> Blocking | None:
    name = mapped.metadata.get(BLOCKING_KEY)
    if name is None:
        return None
    try:
        blocking = Blocking.parse(name)
    except ValueError:
        raise ModelFileError(
            str(mapped.path), f"unknown weight order {name!r} in its metadata"
        ) from None
    for key, info in mapped.tensors.items():
        blocks = info.shape[2:] if len(info.shape) == 4 else None
        if blocks is not None and blocks != (blocking.inputs, blocking.rows):
            raise ModelFileError(str(mapped.path), f"{key} is not in order {name}")
    return blocking


def _aligned(nbytes: int) -> int:
    # Every tensor starts on a 64-byte boundary of the staging buffer, which
    # any dtype view and vectorised kernel accepts.
    return -(-nbytes // 64) * 64


def _target_dtype(stored: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    # Integer or boolean buffers keep their type; only weights take the dtype.
    return dtype if stored.is_floating_point else stored


def has_checkpoint(folder: Path) -> bool:
    return (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file()


def _typed(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(_target_dtype(tensor.dtype, dtype))


def _owned(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    typed = _typed(tensor, dtype)
    return typed.clone() if typed.data_ptr() == tensor.data_ptr() else typed


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
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ModelFileError(str(index), f"not a valid index file ({error})") from error
    shards = [index.parent / name for name in names]
    for shard in shards:
        if not shard.is_file():
            raise ModelFileError(str(shard), "listed in the index but missing")
    return shards
