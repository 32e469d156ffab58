"""Request log lines: one per request, with timings, never the prompt."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from server.log_format import JsonFormatter

SECRET_PROMPT = "my bank password is hunter2"
CHAT = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": SECRET_PROMPT}],
}


def test_request_line_has_counts_and_timings_but_no_prompt(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        client.post("/v1/chat/completions", json=CHAT)

    [line] = [r.getMessage() for r in caplog.records if "chatcmpl-" in r.getMessage()]
    assert " 200 stop " in line
    assert "completion=4" in line and "ttft=" in line and "queue=" in line
    assert "tok/s" in line
    assert SECRET_PROMPT not in caplog.text


def test_json_lines_carry_the_request_fields(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        client.post("/v1/chat/completions", json=CHAT)

    record = next(r for r in caplog.records if "chatcmpl-" in r.getMessage())
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "INFO"
    assert (line["status"], line["outcome"], line["completion_tokens"]) == (
        200,
        "stop",
        4,
    )
    assert line["request_id"].startswith("chatcmpl-")
    assert SECRET_PROMPT not in json.dumps(line)


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.post("/v1/chat/completions", json=CHAT)

    response = client.get("/metrics")

    assert response.headers["content-type"].startswith("text/plain")
    assert "layerstream_generation_tokens_total 4.0" in response.text
    assert "layerstream_requests_running 0.0" in response.text
