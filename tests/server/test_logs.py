"""Request log lines: one per request, with timings, never the prompt."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from engine.errors import InvalidRequestError, RequestTimeoutError
from server.log_format import JsonFormatter

if TYPE_CHECKING:
    from conftest import FakeEngine

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


def test_a_refused_request_logs_what_was_wrong_but_not_the_prompt(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        client.post("/v1/chat/completions", json={**CHAT, "temperature": 9})
        client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})

    bad_value, unknown_model = [r.getMessage() for r in caplog.records]
    assert " 400 error=invalid_request_error param=temperature " in bad_value
    assert " 404 error=model_not_found param=model " in unknown_model
    assert SECRET_PROMPT not in caplog.text


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.post("/v1/chat/completions", json=CHAT)

    response = client.get("/metrics")

    assert response.headers["content-type"].startswith("text/plain")
    assert "layerstream_generation_tokens_total 4.0" in response.text
    assert "layerstream_requests_running 0.0" in response.text


def test_every_choice_is_counted_in_logs_and_metrics(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        client.post("/v1/chat/completions", json={**CHAT, "n": 2})

    [line] = [r.getMessage() for r in caplog.records if "chatcmpl-" in r.getMessage()]
    assert "completion=8" in line
    assert "layerstream_generation_tokens_total 8.0" in client.get("/metrics").text


def test_streamed_text_completion_measures_each_choice_on_its_own(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": CHAT["model"], "prompt": "Hi", "n": 2, "stream": True}
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        client.post("/v1/completions", json=body)

    [line] = [r.getMessage() for r in caplog.records if "cmpl-" in r.getMessage()]
    assert " 200 stop " in line and "completion=8" in line
    text = client.get("/metrics").text
    assert "layerstream_generation_tokens_total 8.0" in text
    assert "layerstream_time_to_first_token_seconds_count 1.0" in text
    # Three gaps in each choice's four tokens; none between the two choices.
    assert "layerstream_inter_token_latency_seconds_count 6.0" in text


def test_a_late_request_of_several_choices_is_logged_as_timed_out(
    client: TestClient, fake_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    fake_engine.error = RequestTimeoutError("the request took longer than 1 s")
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        response = client.post("/v1/chat/completions", json={**CHAT, "n": 2})

    [line] = [r.getMessage() for r in caplog.records if "chatcmpl-" in r.getMessage()]
    assert response.status_code == 504
    assert " 504 timeout " in line
    assert "layerstream_requests_timed_out_total 1.0" in client.get("/metrics").text


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_the_worker_refuses_logs_the_field_at_fault(
    client: TestClient,
    fake_engine: FakeEngine,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    fake_engine.error = InvalidRequestError("cannot be enforced", "response_format")
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        client.post("/v1/chat/completions", json={**CHAT, "stream": stream})

    [line] = [r.getMessage() for r in caplog.records if "chatcmpl-" in r.getMessage()]
    assert " error error=invalid_request_error param=response_format " in line


def test_a_path_cannot_forge_a_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "/v1/models/x%0a2026-01-01 INFO server.access_log: FORGED%00"
    with caplog.at_level(logging.INFO, logger="server.access_log"):
        client.get(forged)

    [line] = [r.getMessage() for r in caplog.records if "FORGED" in r.getMessage()]
    assert "\n" not in line and "\x00" not in line
    assert "/v1/models/x%0A2026-01-01%20INFO" in line
