"""The layerstream command: failures are one line on stderr and a non-zero exit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ModelFileError
from server import cli
from server.cli import main


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _refuse_to_open(model: str | None, options: Any, **_: Any) -> None:
    raise ModelFileError(str(model), "no such file")


def _must_not_open(model: str | None, options: Any, **_: Any) -> None:
    pytest.fail("the model was loaded although the port was taken")


def test_missing_model_file_exits_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    free_port: int,
) -> None:
    monkeypatch.setattr(cli, "open_engine", _refuse_to_open)
    model = tmp_path / "model.safetensors"

    code = main(["serve", "--model", str(model), "--port", str(free_port)])

    err = capsys.readouterr().err
    assert code != 0
    assert err == f"layerstream: error: {model}: no such file\n"


def test_port_in_use_exits_before_loading_the_model(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    busy_port: int,
) -> None:
    monkeypatch.setattr(cli, "open_engine", _must_not_open)

    code = main(["serve", "--port", str(busy_port)])

    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1
    assert f"127.0.0.1:{busy_port}" in err


def test_invalid_setting_exits_with_one_line_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["serve", "--port", "70000"])

    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1
    assert "port" in err


def test_invalid_api_keys_are_named_but_not_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAYERSTREAM_API_KEYS", "[sk-very-secret")

    code = main(["serve"])

    err = capsys.readouterr().err
    assert code != 0
    assert "api_keys" in err
    assert "sk-very-secret" not in err


def test_invalid_config_file_exits_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text("port: [unclosed\n")

    code = main(["serve"])

    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1
    assert "YAML" in err


def test_pull_prints_the_folder_of_the_default_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pulled: list[Path] = []

    def pull_default_model(home: Path, blocking: object) -> Path:
        pulled.append(home)
        return home / "models" / "smollm2-135m-instruct"

    monkeypatch.setattr(cli, "pull_default_model", pull_default_model)

    code = main(["pull", "--home", str(tmp_path)])

    assert (code, pulled) == (0, [tmp_path])
    assert capsys.readouterr().out.strip().endswith("smollm2-135m-instruct")
