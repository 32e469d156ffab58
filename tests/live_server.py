"""A live ``layerstream serve`` process on the real default model, for tests.

One server serves the whole session: the SDK, chat page and load tests share it,
so the model loads once. Its settings are fixed here, in flags, from an empty
working folder and without ``LAYERSTREAM_*`` variables of the caller.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0

FLAGS = [
    "--max-batch",
    "4",
    # A budget below the model's 538 MB: some layers resident, the rest streamed.
    "--max-memory",
    "300MB",
    "--kv-memory",
    "50MB",
]


@dataclass(frozen=True)
class LiveServer:
    port: int
    pid: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSTREAM_")}
    env["LAYERSTREAM_HOME"] = str(home)
    # Runs this checkout's code, whatever copy of the package is installed.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
    )
    return env


def _wait_until_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited on start:\n{log.read_text()}")
        try:
            # /health answers while the model loads; /ready once it serves.
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the server was not ready in {START_TIMEOUT_S} s")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -1


@contextmanager
def serving(home: Path, folder: Path) -> Iterator[LiveServer]:
    """A ready server until the block ends; then it must stop cleanly."""
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--port", str(port), *FLAGS]
    log = folder / "stderr.log"
    # A file, not a pipe: a pipe nobody reads blocks the server once it fills.
    with log.open("wb") as stderr:
        # The working folder is empty so no ./config.yaml changes the settings.
        process = subprocess.Popen(
            command, cwd=folder, env=_server_env(home), stderr=stderr
        )
    try:
        _wait_until_ready(process, port, log)
        yield LiveServer(port, process.pid)
    finally:
        code = _stop(process)
    # SIGTERM stops the server cleanly, after all it served.
    assert code == 0, log.read_text()
