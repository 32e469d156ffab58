"""Probes and the gate: loading, ready, draining."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from server.app import attach_engine, create_app
from server.lifecycle import Phase
from server.settings import Settings

if TYPE_CHECKING:
    from conftest import FakeEngine

CHAT = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "Hi"}],
}


def test_while_loading_probes_answer_and_work_is_refused(
    tmp_path: Path, fake_engine: FakeEngine
) -> None:
    app = create_app(Settings(home=tmp_path))

    with TestClient(app) as client:
        health, ready = client.get("/health"), client.get("/ready")
        models = client.get("/v1/models")
        chat = client.post("/v1/chat/completions", json=CHAT)

    assert health.status_code == 200
    assert (ready.status_code, ready.json()["status"]) == (503, "loading")
    assert ready.headers["retry-after"].isdigit()
    assert models.json()["data"] == []
    assert chat.status_code == 503
    assert chat.json()["error"]["code"] == "model_loading"
    assert "retry-after" in chat.headers


@pytest.mark.parametrize(
    "path", ["/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"]
)
def test_while_loading_every_work_route_is_refused(tmp_path: Path, path: str) -> None:
    with TestClient(create_app(Settings(home=tmp_path))) as client:
        response = client.post(path, json={})

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_loading"


def test_once_the_engine_is_attached_it_is_ready(
    tmp_path: Path, fake_engine: FakeEngine
) -> None:
    app = create_app(Settings(home=tmp_path))

    with TestClient(app) as client:
        attach_engine(app, fake_engine)
        ready = client.get("/ready")
        models = client.get("/v1/models")
        chat = client.post("/v1/chat/completions", json=CHAT)

    assert ready.status_code == 200
    assert [card["id"] for card in models.json()["data"]] == ["smollm2-135m-instruct"]
    assert chat.status_code == 200


def test_draining_refuses_new_requests_but_keeps_probes(client: TestClient) -> None:
    client.app.state.lifecycle.phase = Phase.DRAINING  # type: ignore[attr-defined]

    chat = client.post("/v1/chat/completions", json=CHAT)

    assert chat.status_code == 503
    assert chat.json()["error"]["code"] == "shutting_down"
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200


def test_refusals_are_counted_in_metrics(client: TestClient) -> None:
    client.app.state.lifecycle.phase = Phase.DRAINING  # type: ignore[attr-defined]
    client.post("/v1/chat/completions", json=CHAT)

    text = client.get("/metrics").text

    assert 'layerstream_requests_rejected_total{code="shutting_down"} 1.0' in text
