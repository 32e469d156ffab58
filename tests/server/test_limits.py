"""Request body limit and CORS origins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

if TYPE_CHECKING:
    from conftest import FakeEngine

ORIGIN = "https://chat.example.org"


@pytest.fixture
def small_client(tmp_path: Path, fake_engine: FakeEngine) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path, max_body_size="1KB", cors_origins=ORIGIN)
    with TestClient(create_app(settings, fake_engine)) as client:
        yield client


def _big_body() -> bytes:
    return b'{"messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}'


def test_body_over_the_limit_is_a_413_in_the_openai_shape(
    small_client: TestClient,
) -> None:
    response = small_client.post("/v1/chat/completions", content=_big_body())

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_text_completion_body_over_the_limit_is_a_413(
    small_client: TestClient,
) -> None:
    body = b'{"model": "smollm2-135m-instruct", "prompt": "' + b"x" * 2000 + b'"}'

    response = small_client.post("/v1/completions", content=body)

    assert response.status_code == 413


def test_chunked_body_over_the_limit_is_a_413(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield _big_body()  # a generator: sent without a Content-Length

    response = small_client.post("/v1/chat/completions", content=chunks())

    assert response.status_code == 413


def test_chunked_body_within_the_limit_is_served(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "smollm2-135m-instruct", '
        yield b'"messages": [{"role": "user", "content": "Hi"}]}'

    response = small_client.post(
        "/v1/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 200


def test_configured_origin_gets_cors_headers(small_client: TestClient) -> None:
    response = small_client.options(
        "/v1/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_by_default_no_origin_is_allowed(client: TestClient) -> None:
    response = client.get("/v1/models", headers={"Origin": ORIGIN})

    assert "access-control-allow-origin" not in response.headers
