"""Fixtures shared by the whole suite: the real default model, built once.

The default model is pulled into the same store the server uses
(``LAYERSTREAM_HOME``, else ``~/.cache/layerstream``), so a machine that
already ran ``layerstream serve`` or ``layerstream pull`` converts nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.kernels import cpu_blocking
from engine.store import fetch_default_gguf, pull_default_model
from tests.live_server import LiveServer, serving

CPU = torch.device("cpu")


def store_home() -> Path:
    return Path(os.environ.get("LAYERSTREAM_HOME", "~/.cache/layerstream")).expanduser()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    # As ``layerstream serve`` on the CPU stores it, so neither converts again.
    return pull_default_model(store_home(), cpu_blocking(CPU, torch.float32))


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original GGUF file, for comparisons with transformers' own loader."""
    return fetch_default_gguf(tmp_path_factory.mktemp("smollm2-gguf"))


@pytest.fixture(scope="session")
def live_server(
    smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A ``layerstream serve`` of the default model, pulled by ``smollm2_dir``."""
    with serving(store_home(), tmp_path_factory.mktemp("live-server")) as server:
        yield server
