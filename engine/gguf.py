"""Turn a GGUF file into the engine's store: config, tokenizer, one safetensors.

transformers knows how to read GGUF metadata and how GGUF tensor names and
layouts map to its own modules, but its loader dequantizes the whole file into
memory at once. Here the same mapping is applied one tensor at a time, and each
dequantized tensor goes straight to disk, so conversion memory stays near the
size of the largest tensor.

Given a blocking, the layers' linear weights are written in oneDNN's blocked
order, so that the CPU kernel reads them in place at its best speed (see
``engine.onednn``); transformers cannot read such a store, ``engine.store``'s
``export_plain`` writes one it can.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor, dequantize
from torch import nn
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.modeling_gguf_pytorch_utils import (
    TENSOR_PROCESSORS,
    TensorProcessor,
    get_gguf_hf_weights_map,
)

from engine.checkpoint import BLOCKING_KEY, SINGLE_FILE
from engine.errors import ModelFileError, UnsupportedModelError
from engine.layout import stack_prefix
from engine.onednn import Blocking, picks
from engine.skeleton import build_skeleton

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedTensor:
    source: ReaderTensor
    name: str
    shape: tuple[int, ...]  # as the model has it
    blocking: Blocking | None = None  # written in this blocked order

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    @property
    def stored_shape(self) -> tuple[int, ...]:
        if self.blocking is None:
            return self.shape
        return self.blocking.blocked_shape(self.shape)


def convert_gguf(
    gguf_path: Path, out_dir: Path, blocking: Blocking | None = None
) -> None:
    """Write ``out_dir`` as a model folder; ``out_dir`` appears only when complete.

    A folder already at ``out_dir`` is replaced once the new one is complete.
    """
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a conversion cut short
    partial.mkdir(parents=True)
    logger.info("reading the config and tokenizer of %s", gguf_path.name)
    config = _save_config_and_tokenizer(gguf_path, partial)

    reader = _open_reader(gguf_path)
    processor = _processor(config)
    plan = _plan(reader, config, processor, gguf_path, blocking)
    _write_safetensors(plan, partial / SINGLE_FILE, processor)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(partial, out_dir)
    logger.info("converted %s into %s", gguf_path.name, out_dir)


def _open_reader(gguf_path: Path) -> GGUFReader:
    try:
        return GGUFReader(gguf_path)
    except (ValueError, OSError, struct.error) as error:
        raise ModelFileError(
            str(gguf_path), f"not a readable GGUF file ({error})"
        ) from error


def _save_config_and_tokenizer(gguf_path: Path, out_dir: Path):
    try:
        config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name
        )
    except ValueError as error:
        raise UnsupportedModelError(f"{gguf_path}: {error}") from error
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return config


def _processor(config) -> TensorProcessor:
    # The processors read a plain dict of the config (head counts, for one).
    architecture = _architecture(config)
    return TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())


def _architecture(config) -> str:
    return {"gemma3_text": "gemma3"}.get(config.model_type, config.model_type)


def _plan(
    reader: GGUFReader,
    config,
    processor: TensorProcessor,
    gguf_path: Path,
    blocking: Blocking | None,
) -> list[PlannedTensor]:
    skeleton: PreTrainedModel = build_skeleton(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    name_map = get_gguf_hf_weights_map(skeleton, processor)
    blocked = _blocked_names(skeleton, blocking)

    plan = []
    for tensor in reader.tensors:
        name = name_map.get(tensor.name)
        if name is None:
            logger.debug(
                "GGUF tensor %s has no place in the model; skipped", tensor.name
            )
            continue
        layout = blocking if name in blocked else None
        plan.append(PlannedTensor(tensor, name, shapes[name], layout))
    if not plan:
        raise ModelFileError(str(gguf_path), "no tensor maps to the model")
    # In the model's own order, so that q, k, v (and gate, up) lie side by
    # side and the engine can run each group as one product.
    place = {name: index for index, name in enumerate(shapes)}
    return sorted(plan, key=lambda item: place[item.name])


def _blocked_names(model: PreTrainedModel, blocking: Blocking | None) -> set[str]:
    """The layers' linear weights that oneDNN here lays out in ``blocking``."""
    if blocking is None:
        return set()
    stack = stack_prefix(model)
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.startswith(stack)
        and picks(blocking, tuple(module.weight.shape))
    }


def _write_safetensors(
    plan: list[PlannedTensor], path: Path, processor: TensorProcessor
) -> None:
    with path.open("wb") as out:
        out.write(_header(plan))
        # disable=None: a bar on a terminal only; a container's log (JSON
        # lines, say) gets the log lines before and after, not the bar.
        bar = tqdm(plan, desc="Converting GGUF", unit="tensor", disable=None)
        for item in bar:
            out.write(_stored(item, _dequantized(item, processor)).tobytes())


def _stored(item: PlannedTensor, weights: np.ndarray) -> np.ndarray:
    if item.blocking is None:
        return weights
    return item.blocking.block(torch.from_numpy(weights)).numpy()


def _header(plan: list[PlannedTensor]) -> bytes:
    entries: dict[str, object] = {}
    orders = {item.blocking.name for item in plan if item.blocking is not None}
    if orders:
        entries["__metadata__"] = {BLOCKING_KEY: orders.pop()}
    offset = 0
    for item in plan:
        entries[item.name] = {
            "dtype": "F32",
            "shape": list(item.stored_shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)  # keeps tensor data 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _dequantized(item: PlannedTensor, processor: TensorProcessor) -> np.ndarray:
    tensor = item.source
    weights = dequantize(tensor.data, tensor.tensor_type)
    weights = processor.process(weights=weights, name=tensor.name).weights
    if tuple(weights.shape) != item.shape:
        raise ModelFileError(
            tensor.name, f"shape {weights.shape} where the model expects {item.shape}"
        )
    return np.ascontiguousarray(weights, dtype=np.float32)
