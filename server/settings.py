"""The server's one settings object, and its translation into engine options.

Sources, lowest to highest precedence: ``config.yaml`` < ``LAYERSTREAM_*``
environment variables < command-line flags (passed as keyword arguments).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from engine.options import EngineOptions
from engine.residency import default_budget, parse_bytes

DEFAULT_CONFIG_FILE = Path("config.yaml")
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]
# NoDecode: a list from the environment or a flag may be comma-separated, not
# only JSON; ``_split_list`` reads both.
StringList = Annotated[list[str], NoDecode]
SecretList = Annotated[list[SecretStr], NoDecode]


class SettingsError(ValueError):
    """A setting is well-formed but cannot be honoured on this machine."""


class Settings(BaseSettings):
    # A NaN passes no range check, so every number must be finite first.
    model_config = SettingsConfigDict(
        env_prefix="LAYERSTREAM_", extra="forbid", allow_inf_nan=False
    )

    config: Path | None = None
    model: str | None = None
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    device: str = "auto"
    dtype: DtypeName = "auto"
    max_batch: int = Field(default=8, ge=1)
    max_queue: int = Field(default=64, ge=1)
    prefetch_depth: int = Field(default=2, ge=1)
    max_sweep_tokens: int = Field(default=512, ge=1)
    # Seconds an idle engine waits between arrivals to start them in one sweep.
    batch_wait: float = Field(default=0.01, ge=0, le=1)
    # Sizes such as "2GB" or "512MiB"; "auto" takes a share of what is free.
    max_memory: str = "auto"
    kv_memory: str | None = None
    home: Path = Path("~/.cache/layerstream")
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    # Seconds from arrival to the end of a request; 0: no deadline.
    request_timeout: float = Field(default=0, ge=0)
    # Seconds running requests get to finish after SIGTERM.
    drain_timeout: float = Field(default=30, ge=0)
    api_keys: SecretList = []
    api_key_file: Path | None = None
    cors_origins: StringList = []
    max_body_size: str = "4MB"

    @field_validator("config", "api_key_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"file {path} does not exist")
        return path

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE_PATTERN.fullmatch(device):
            raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
        return device

    @field_validator("max_memory", "kv_memory", "max_body_size")
    @classmethod
    def _size(cls, size: str | None) -> str | None:
        if size is not None and size != "auto":
            parse_bytes(size)  # raises ValueError with the bad value
        return size

    @field_validator("home")
    @classmethod
    def _expand_home(cls, home: Path) -> Path:
        return home.expanduser()

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, level: Any) -> Any:
        return level.lower() if isinstance(level, str) else level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file(init_settings(), env_settings())
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if config_file is None:
            return sources
        return (*sources, YamlConfigSettingsSource(settings_cls, yaml_file=config_file))


def _config_file(flags: dict[str, Any], env: dict[str, Any]) -> Path | None:
    """The YAML file to read: named by a flag, else the environment, else default."""
    chosen = flags.get("config") or env.get("config")
    if chosen:
        return Path(chosen)
    # The default file is optional; a named one that is missing fails validation.
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        _require_cuda_device(device)
    return device


def _require_cuda_device(device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise SettingsError(f"device {device} requested but CUDA is not available")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise SettingsError(f"device {device} requested but only {count} GPU(s) seen")


def resolve_dtype(name: DtypeName, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type != "cuda":
        return torch.float32
    # Older GPUs emulate bfloat16 slowly or not at all; float16 is the fallback.
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def engine_options(settings: Settings) -> EngineOptions:
    device = resolve_device(settings.device)
    return EngineOptions(
        device=device,
        dtype=resolve_dtype(settings.dtype, device),
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        prefetch_depth=settings.prefetch_depth,
        max_sweep_tokens=settings.max_sweep_tokens,
        batch_wait_s=settings.batch_wait,
        max_memory=_bytes_or_auto(settings.max_memory, device),
        kv_memory=parse_bytes(settings.kv_memory) if settings.kv_memory else None,
        home=settings.home,
        request_timeout_s=settings.request_timeout or None,
    )


def _bytes_or_auto(size: str, device: torch.device) -> int:
    return default_budget(device) if size == "auto" else parse_bytes(size)
