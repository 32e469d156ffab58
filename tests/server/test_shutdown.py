"""SIGTERM on a real ``layerstream serve`` process with streaming clients attached.

The gate closes at once (new requests get 503), a stream that can finish within
``drain_timeout`` finishes, one that cannot ends with an error event when the
time is up, and the process exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.server.tiny_server import MODEL, free_port, save_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30.0
# Long enough for a short answer on a busy machine; far too short for 30000 tokens.
DRAIN_S = 6.0


class StreamReader(threading.Thread):
    """Reads one streamed completion to its end, noting its first text."""

    def __init__(self, url: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.max_tokens = max_tokens
        self.has_text = threading.Event()
        self.data: list[str] = []

    def run(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", self.url, json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    self.data.append(line.removeprefix("data: "))
                    if len(self.data) > 1:
                        self.has_text.set()
        self.has_text.set()


def _start(model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSTREAM_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
    )
    flags = ["--model", str(model), "--served-model-name", MODEL]
    flags += ["--port", str(port), "--drain-timeout", str(DRAIN_S)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "server", "serve", *flags],
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_until_ready(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited on start:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server was not ready in {START_TIMEOUT_S} s")


def test_sigterm_drains_streams_then_exits_0(tmp_path: Path, smollm2_dir: Path) -> None:
    model = save_tiny_model(tmp_path / "tiny", smollm2_dir)
    port, log = free_port(), tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    process = _start(model, port, log)
    try:
        _wait_until_ready(process, base, log)
        short = StreamReader(f"{base}/v1/chat/completions", max_tokens=20)
        endless = StreamReader(f"{base}/v1/chat/completions", max_tokens=30000)
        for reader in (short, endless):
            reader.start()
            assert reader.has_text.wait(30)

        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        code = process.wait(EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()

    assert code == 0, log.read_text()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert "retry-after" in refused.headers
    short.join(5)
    endless.join(5)
    assert short.data[-1] == "[DONE]"
    assert json.loads(short.data[-2])["choices"][0]["finish_reason"] == "length"
    assert json.loads(endless.data[-1])["error"]["code"] == "engine_stopped"
