"""API keys: refused without one, accepted with any configured, probes open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.auth import is_known_key
from server.settings import Settings, SettingsError

if TYPE_CHECKING:
    from conftest import FakeEngine

CHAT = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "Hi"}],
}
# Every generation or tokenizer route, with a body it would otherwise accept.
WORK_ROUTES = [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", {"model": "smollm2-135m-instruct", "prompt": "Hi"}),
    ("/v1/embeddings", {"model": "smollm2-135m-instruct", "input": "Hi"}),
    ("/tokenize", {"prompt": "Hi"}),
    ("/detokenize", {"tokens": [1, 2]}),
]


@pytest.fixture
def keyed_client(tmp_path: Path, fake_engine: FakeEngine) -> Iterator[TestClient]:
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nfile-key\n\n")
    settings = Settings(
        home=tmp_path / "home", api_keys=["listed-key"], api_key_file=key_file
    )
    with TestClient(create_app(settings, fake_engine)) as client:
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, _bearer("wrong"), {"Authorization": "x"}])
def test_missing_or_wrong_key_is_a_401_in_the_openai_shape(
    keyed_client: TestClient, headers: dict[str, str]
) -> None:
    response = keyed_client.post("/v1/chat/completions", json=CHAT, headers=headers)

    error = response.json()["error"]
    assert response.status_code == 401
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "invalid_api_key",
    )


@pytest.mark.parametrize("key", ["listed-key", "file-key"])
def test_each_configured_key_is_accepted(keyed_client: TestClient, key: str) -> None:
    response = keyed_client.post(
        "/v1/chat/completions", json=CHAT, headers=_bearer(key)
    )

    assert response.status_code == 200


@pytest.mark.parametrize(("path", "body"), WORK_ROUTES)
def test_every_work_route_needs_a_key(
    keyed_client: TestClient, path: str, body: dict[str, object]
) -> None:
    refused = keyed_client.post(path, json=body)
    served = keyed_client.post(path, json=body, headers=_bearer("listed-key"))

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert served.status_code == 200


def test_model_list_needs_a_key(keyed_client: TestClient) -> None:
    assert keyed_client.get("/v1/models").status_code == 401


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_and_metrics_need_no_key(keyed_client: TestClient, path: str) -> None:
    assert keyed_client.get(path).status_code == 200


@pytest.mark.parametrize("headers", [{}, _bearer("anything")])
def test_without_keys_any_or_no_header_is_accepted(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.post("/v1/chat/completions", json=CHAT, headers=headers)

    assert response.status_code == 200


def test_key_file_without_keys_is_refused_at_start(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# nothing yet\n")

    with pytest.raises(SettingsError, match="holds no keys"):
        create_app(Settings(home=tmp_path, api_key_file=key_file))


def test_keys_from_the_environment_may_be_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAYERSTREAM_API_KEYS", "one, two")

    keys = Settings().api_keys

    assert [key.get_secret_value() for key in keys] == ["one", "two"]


def test_keys_are_masked_when_settings_are_dumped() -> None:
    dumped = Settings(api_keys=["secret-value"]).model_dump(mode="json")

    assert "secret-value" not in str(dumped)


def test_key_comparison_needs_an_exact_match() -> None:
    keys = (b"abc", b"def")

    assert is_known_key(b"def", keys)
    assert not is_known_key(b"de", keys)
    assert not is_known_key(b"abcdef", keys)
