"""Generated requests from the server's own OpenAPI schema: never a 5xx.

Runs against the real engine with a tiny random model whose KV budget holds
only a short conversation, so that any generated request ends quickly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from schemathesis.openapi.loaders import from_asgi

from engine import Engine
from server.app import create_app
from server.settings import Settings
from tests.server.tiny_server import MODEL, open_tiny_engine, save_tiny_model

# 128 tokens of keys and values: prompt and answer both stay short.
KV_BYTES = 128 * 256
MAX_EXAMPLES = 12


@pytest.fixture(scope="module")
def fuzz_engine(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path
) -> Iterator[Engine]:
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny"), smollm2_dir)
    engine = open_tiny_engine(folder, max_batch=4, kv_memory=KV_BYTES)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def api_schema(fuzz_engine: Engine, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    app = create_app(Settings(served_model_name=MODEL, home=home), fuzz_engine)
    return from_asgi("/openapi.json", app)


def _check_operation(operation, statuses: list[int]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,  # the same cases every run: a failure can be replayed
    )
    def check(case) -> None:
        response = case.call()
        assert response.status_code < 500, (case.path, case.body, response.text)
        if isinstance(case.body, dict) and "model" in case.body:
            # Again with the served model's name, so the request reaches the engine.
            case.body["model"] = MODEL
            response = case.call()
            assert response.status_code < 500, (case.path, case.body, response.text)
            statuses.append(response.status_code)

    check()


def test_no_generated_request_gets_a_server_error(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    statuses: list[int] = []

    for operation in operations:
        _check_operation(operation, statuses)

    assert any(op.path == "/v1/chat/completions" for op in operations)
    assert statuses  # bodies with the served model's name were sent too
