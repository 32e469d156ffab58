"""layerstream's server as a child process: started, awaited, stopped.

The server runs from an empty working folder and without ``LAYERSTREAM_*``
variables, so that a ``config.yaml`` or an environment setting of the caller
cannot change what is measured: every setting comes from the flags here.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

SERVED_NAME = "bench"
_POLL_S = 0.3
_STOP_GRACE_S = 20.0
_LOG_TAIL_LINES = 3


class ServerFailed(Exception):
    pass


@dataclass(frozen=True)
class Budget:
    """A memory budget as the server's flags give it."""

    max_memory: str  # e.g. "201MB": weights and KV cache
    kv_memory: str | None = None  # the KV cache's share; None: the server's default

    def flags(self) -> list[str]:
        flags = ["--max-memory", self.max_memory]
        if self.kv_memory is not None:
            flags += ["--kv-memory", self.kv_memory]
        return flags


@dataclass(frozen=True)
class ServerSpec:
    folder: Path
    home: Path
    max_batch: int
    budget: Budget | None  # None: the server's own default


@dataclass
class RunningServer:
    process: subprocess.Popen
    base_url: str
    log_path: Path
    budget: Budget | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Residency:
    resident_layers: int
    streamed_layers: int
    streamed_bytes_per_sweep: int  # in the compute dtype

    def describe(self) -> str:
        layers = self.resident_layers + self.streamed_layers
        per_sweep = self.streamed_bytes_per_sweep / 1e6
        return (
            f"{self.resident_layers}/{layers} layers resident, "
            f"{per_sweep:.0f} MB streamed per sweep"
        )


def fetch_residency(base_url: str) -> Residency | None:
    """What the server keeps resident and streams, from its model card if told."""
    try:
        card = httpx.get(f"{base_url}/v1/models/{SERVED_NAME}", timeout=10.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    plan = card.get("residency") or {}
    try:
        return Residency(
            len(plan["resident_layers"]),
            len(plan["streamed_layers"]),
            plan["streamed_bytes_per_sweep"],
        )
    except (KeyError, TypeError):
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(spec: ServerSpec, timeout_s: float) -> RunningServer:
    """A ready server (model loaded), started with the spec's budget flags."""
    port = free_port()
    command = _command(spec, port)
    logger.info("starting %s", " ".join(command))
    log = tempfile.NamedTemporaryFile(
        prefix="bench-server-", suffix=".log", delete=False
    )
    with log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
            env=_clean_environment(),
        )
    base_url = f"http://127.0.0.1:{port}"
    server = RunningServer(process, base_url, Path(log.name), spec.budget)
    try:
        _wait_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _command(spec: ServerSpec, port: int) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "server",
        "serve",
        *("--model", str(spec.folder)),
        *("--served-model-name", SERVED_NAME),
        *("--home", str(spec.home)),
        *("--port", str(port)),
        *("--max-batch", str(spec.max_batch)),
        *("--device", "cpu"),
        *("--log-level", "warning"),
    ]
    return command if spec.budget is None else command + spec.budget.flags()


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LAYERSTREAM_")}


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerFailed(f"server exited ({code}): {_log_tail(server.log_path)}")
        if _is_ready(server.base_url):
            return
        time.sleep(_POLL_S)
    raise ServerFailed(f"server not ready after {timeout_s:.0f} s")


def _is_ready(base_url: str) -> bool:
    # /health answers 200 while the model still loads; /ready waits for it.
    try:
        return httpx.get(f"{base_url}/ready", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return " / ".join(lines[-_LOG_TAIL_LINES:]) or "no output"
