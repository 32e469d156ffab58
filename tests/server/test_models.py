"""The model listing and the health probe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

if TYPE_CHECKING:
    from conftest import FakeEngine

MODEL = "smollm2-135m-instruct"


def test_models_lists_the_served_model(client: TestClient) -> None:
    response = client.get("/v1/models")

    assert response.json() == {
        "object": "list",
        "data": [
            {
                "id": MODEL,
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "layerstream",
                "context_length": 512,
                "residency": {},
            }
        ],
    }


def test_model_by_id_is_its_card(client: TestClient) -> None:
    response = client.get(f"/v1/models/{MODEL}")

    assert (response.status_code, response.json()["id"]) == (200, MODEL)


def test_unknown_model_by_id_is_model_not_found(client: TestClient) -> None:
    response = client.get("/v1/models/org/no-such-model")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_served_model_name_replaces_the_id(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    settings = Settings(served_model_name="my-model", home=tmp_path)
    with TestClient(create_app(settings, fake_engine)) as client:
        listed = client.get("/v1/models").json()["data"][0]["id"]

    assert listed == "my-model"


def test_health_is_ok(client: TestClient) -> None:
    response = client.get("/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_stats_report_the_engine_counters(client: TestClient) -> None:
    body = client.get("/stats").json()
    assert body["totals"]["sweeps"] == 0
    assert {"running", "waiting", "preempted", "residency"} <= body.keys()
