"""Settings: config.yaml < LAYERSTREAM_* environment < command-line flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from server.settings import Settings, engine_options


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("port: 9001\nmax_batch: 3\n")
    return path


def test_config_file_overrides_defaults(config_file: Path) -> None:
    assert Settings().port == 9001


def test_environment_overrides_config_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERSTREAM_PORT", "9002")

    assert Settings().port == 9002


def test_flags_override_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERSTREAM_PORT", "9002")

    assert Settings(port="9003").port == 9003


def test_sources_merge_field_by_field(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERSTREAM_PORT", "9002")

    assert Settings().max_batch == 3


def test_config_file_can_be_named_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("host: 0.0.0.0\n")
    monkeypatch.setenv("LAYERSTREAM_CONFIG", str(other))

    assert Settings().host == "0.0.0.0"


def test_config_flag_wins_over_config_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "env.yaml").write_text("port: 1111\n")
    (tmp_path / "flag.yaml").write_text("port: 2222\n")
    monkeypatch.setenv("LAYERSTREAM_CONFIG", str(tmp_path / "env.yaml"))

    assert Settings(config=tmp_path / "flag.yaml").port == 2222


def test_missing_named_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(config=tmp_path / "nowhere.yaml")


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("prot: 9000\n")

    with pytest.raises(ValidationError, match="prot"):
        Settings()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 0),
        ("port", 70000),
        ("max_batch", 0),
        ("max_queue", -1),
        ("prefetch_depth", 0),
        ("device", "tpu"),
        ("dtype", "int8"),
        ("log_level", "loud"),
        ("batch_wait", -0.1),
        ("batch_wait", 2),
        ("batch_wait", float("nan")),
        ("request_timeout", float("nan")),
    ],
)
def test_out_of_range_value_is_an_error_naming_the_field(
    field: str, value: object
) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_home_is_expanded() -> None:
    assert Settings(home="~/models").home == Path.home() / "models"


def test_auto_on_cpu_is_float32_on_cpu() -> None:
    options = engine_options(Settings(device="cpu"))

    assert (options.device, options.dtype) == (torch.device("cpu"), torch.float32)


def test_explicit_dtype_is_kept() -> None:
    options = engine_options(Settings(device="cpu", dtype="bfloat16"))

    assert options.dtype == torch.bfloat16


def test_engine_options_carry_the_limits(tmp_path: Path) -> None:
    settings = Settings(device="cpu", max_batch=2, max_queue=5, prefetch_depth=3)

    options = engine_options(settings.model_copy(update={"home": tmp_path}))

    assert (options.max_batch, options.max_queue, options.prefetch_depth) == (2, 5, 3)
    assert options.home == tmp_path
