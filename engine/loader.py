"""From a model argument to a running engine.

A model argument is nothing (the default model), a Hugging Face model folder
read in place, a ``.gguf`` file converted once into the store, or a hub id.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from engine.checkpoint import Checkpoint, has_checkpoint
from engine.engine import Engine
from engine.errors import ModelFileError, UnsupportedModelError
from engine.kernels import cpu_blocking
from engine.kv_cache import BLOCK_TOKENS
from engine.layout import kv_shape
from engine.onednn import Blocking
from engine.options import EngineOptions
from engine.residency import BudgetTooSmallError, ResidencyPlan, plan_residency
from engine.runner import ModelRunner
from engine.skeleton import build_skeleton
from engine.store import DEFAULT_MODEL_ID, model_id_for, pull_default_model, stored_gguf

logger = logging.getLogger(__name__)

# The engine calls transformers' decoder layers directly; their keyword
# arguments changed within 5.x, so only the tested releases are accepted.
TRANSFORMERS_RANGE = (Version("5.25"), Version("5.26"))
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text"})


@dataclass(frozen=True)
class ModelFolder:
    model_id: str
    path: Path


def open_engine(
    model: str | None, options: EngineOptions, worker_thread: bool = True
) -> Engine:
    """Load the model; the loop runs on a thread of its own unless told not to."""
    check_transformers()
    folder = resolve_model(model, options.home, store_blocking(options))
    config = _load_config(folder.path)
    tokenizer = _load_tokenizer(folder.path)
    checkpoint = Checkpoint(folder.path)
    kv_per_token = kv_bytes_per_token(config, options.dtype)
    plan = _plan(checkpoint, options, kv_per_token)
    kv_tokens = kv_tokens_in(plan.kv_bytes, kv_per_token)
    runner = ModelRunner(
        build_skeleton(config),
        checkpoint,
        options.device,
        options.dtype,
        _prefetch_depth(plan, options),
        plan.resident_layers,
    )
    _log_plan(folder, plan, options)
    stops = _stop_token_ids(config, tokenizer, folder.path)
    engine = Engine(
        folder.model_id, tokenizer, runner, options, stops, kv_tokens, worker_thread
    )
    engine.plan = plan.describe()
    return engine


def kv_tokens_in(kv_bytes: int, per_token: int) -> int | None:
    """Tokens a KV budget holds; None for no budget.

    A budget below one block of the pool could hold no sequence at all, and
    is refused rather than served with a context of a few tokens.
    """
    if not kv_bytes:
        return None
    tokens = kv_bytes // per_token
    if tokens < BLOCK_TOKENS:
        raise BudgetTooSmallError(
            f"a KV cache budget of {kv_bytes} bytes holds {tokens} tokens; "
            f"it needs at least {BLOCK_TOKENS} ({BLOCK_TOKENS * per_token} bytes "
            "for this model)"
        )
    return tokens


def kv_bytes_per_token(config: PretrainedConfig, dtype: torch.dtype) -> int:
    """Keys and values of one token in every layer."""
    kv_heads, head_dim = kv_shape(config)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype.itemsize


def _plan(
    checkpoint: Checkpoint, options: EngineOptions, kv_per_token: int
) -> ResidencyPlan:
    itemsize = options.dtype.itemsize
    kv = options.kv_memory
    if kv is None and options.max_memory is not None:
        kv = options.max_memory // 4
    layers = [
        checkpoint.layer_numel(i) * itemsize for i in range(checkpoint.num_layers)
    ]
    return plan_residency(
        options.max_memory,
        checkpoint.resident_numel * itemsize,
        layers,
        kv or 0,
        _wanted_in_flight(checkpoint, options),
    )


def _wanted_in_flight(checkpoint: Checkpoint, options: EngineOptions) -> int:
    """The runner's staging buffers: read ahead, being read, being computed."""
    on_cpu = options.device.type == "cpu"
    blocking = cpu_blocking(options.device, options.dtype)
    in_place = [
        checkpoint.is_stored_as(i, options.dtype)
        and checkpoint.is_laid_out_for(i, blocking)
        for i in range(checkpoint.num_layers)
    ]
    if on_cpu and all(in_place):
        return 0  # every layer is used in place in the page cache: no buffers
    return options.prefetch_depth + 2


def _prefetch_depth(plan: ResidencyPlan, options: EngineOptions) -> int:
    # A budget that holds fewer layers in flight than asked reads ahead less.
    if plan.budget is None or plan.in_flight_layers == 0:
        return options.prefetch_depth
    return min(options.prefetch_depth, plan.in_flight_layers - 2)


def check_transformers() -> None:
    found = Version(transformers.__version__)
    low, high = TRANSFORMERS_RANGE
    if not low <= found < high:
        raise UnsupportedModelError(
            f"layerstream needs transformers>={low},<{high}; found {found}"
        )


def store_blocking(options: EngineOptions) -> Blocking | None:
    """The weight order a GGUF file is converted into for these options."""
    return cpu_blocking(options.device, options.dtype)


def resolve_model(
    model: str | None, home: Path, blocking: Blocking | None
) -> ModelFolder:
    """The folder to read ``model`` from; GGUF files are stored as ``blocking`` says."""
    if model is None:
        return ModelFolder(DEFAULT_MODEL_ID, pull_default_model(home, blocking))
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelFolder(model_id_for(path), stored_gguf(path, home, blocking))
    if path.is_dir():
        _check_folder(path)
        return ModelFolder(model_id_for(path), path)
    if path.exists():
        raise ModelFileError(str(path), "expected a model folder or a .gguf file")
    raise ModelFileError(str(path), "no such file or folder")


def _check_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelFileError(str(path), "no config.json in the folder")
    if not has_checkpoint(path):
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = f" ({pickles[0]} is a pickle file; convert it)" if pickles else ""
        raise ModelFileError(str(path), f"no safetensors checkpoint{hint}")


def _load_config(folder: Path) -> PretrainedConfig:
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ModelFileError(str(folder / "config.json"), str(error)) from error
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{folder}: model type {config.model_type!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )
    return config


def _load_tokenizer(folder: Path):
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ModelFileError(
            str(folder), f"cannot load the tokenizer: {error}"
        ) from error


def _stop_token_ids(config, tokenizer, folder: Path) -> frozenset[int]:
    ids: set[int] = set()
    for value in (config.eos_token_id, tokenizer.eos_token_id, _generation_eos(folder)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(value)
    return frozenset(ids)


def _generation_eos(folder: Path) -> int | list[int] | None:
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("eos_token_id")


def _log_plan(folder: ModelFolder, plan: ResidencyPlan, options: EngineOptions) -> None:
    logger.info(
        "model %s from %s on %s as %s: resident %s (embeddings, norm, head and "
        "%d of %d layers), streamed %s per sweep in %d layers, KV cache %s, "
        "budget %s",
        folder.model_id, folder.path, options.device, options.dtype,
        _bytes(plan.resident_bytes), len(plan.resident_layers),
        len(plan.layer_bytes), _bytes(plan.streamed_bytes_per_sweep),
        len(plan.streamed_layers), _bytes(plan.kv_bytes),
        "none" if plan.budget is None else _bytes(plan.budget),
    )  # fmt: skip


def _bytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
