"""The chat page at ``/``: served as one file, then used in a real browser.

The browser is the system's Chromium (Debian's ``chromium`` package), driven by
Playwright against the session's live server on the real default model: the
page lists the model, streams an answer, stops it, and sends the conversation
back with the next message.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest
import tomllib
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.live_server import LiveServer

MODEL = "smollm2-135m-instruct"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT = "Tell me a long story about a dragon."
STREAM_TIMEOUT_S = 60.0
# Distinct lengths of the answer seen while it streams, before pressing stop.
GROWTH_STEPS = 3
QUIET_S = 1.5  # how long a stopped answer must stay unchanged
RATE = re.compile(r"(\d+) tokens · ([\d.]+) tokens/s")
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_page_is_served_as_html(client: TestClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<script>" in response.text


def test_page_may_only_reach_its_own_server(client: TestClient) -> None:
    policy = client.get("/").headers["content-security-policy"]

    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy


def test_page_ships_in_the_package() -> None:
    # An editable install finds the file anyway; a wheel only with package data.
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["server"]

    assert any(fnmatch("static/chat.html", pattern) for pattern in patterns)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # The system's browser: nothing is downloaded, and CI installs the package.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class ChatRun:
    """What one conversation in the page showed, for the tests to inspect."""

    page: Page
    requested_urls: list[str]
    lengths_while_streaming: list[int]
    rate_text: str
    text_at_stop: str
    text_after_quiet: str
    is_marked_stopped: bool
    running_after_stop: int


def _answer(page: Page) -> str:
    return page.locator(".message.assistant").last.inner_text()


def _watch_growth(page: Page) -> list[int]:
    """Lengths of the streaming answer, until it grew ``GROWTH_STEPS`` times."""
    lengths: list[int] = []
    deadline = time.monotonic() + STREAM_TIMEOUT_S
    while len(lengths) < GROWTH_STEPS and time.monotonic() < deadline:
        length = len(_answer(page))
        if length and (not lengths or length > lengths[-1]):
            lengths.append(length)
        time.sleep(0.05)
    return lengths


def _running_after_stop(base_url: str) -> int:
    """Sequences the engine still holds, once it had a few sweeps to drop ours."""
    deadline = time.monotonic() + 10.0
    while True:
        stats = httpx.get(f"{base_url}/stats", timeout=5).json()
        busy = stats["running"] + stats["waiting"]
        if busy == 0 or time.monotonic() > deadline:
            return busy
        time.sleep(0.1)


@pytest.fixture(scope="module")
def chat_run(browser: Browser, live_server: LiveServer) -> Iterator[ChatRun]:
    page = browser.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(f"{live_server.base_url}/")
    expect(page.locator(f"#model option[value='{MODEL}']")).to_be_attached()

    page.fill("#max-tokens", "400")  # far more than the test lets it write
    page.fill("#temperature", "0")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    lengths = _watch_growth(page)
    rate = page.inner_text("#rate")

    page.click("#stop")
    expect(page.locator("#send")).to_be_enabled()
    at_stop = _answer(page)
    time.sleep(QUIET_S)
    yield ChatRun(
        page=page,
        requested_urls=urls,
        lengths_while_streaming=lengths,
        rate_text=rate,
        text_at_stop=at_stop,
        text_after_quiet=_answer(page),
        is_marked_stopped="stopped"
        in (page.locator(".message.assistant").last.get_attribute("class") or ""),
        running_after_stop=_running_after_stop(live_server.base_url),
    )
    page.close()


def test_page_lists_the_served_model(chat_run: ChatRun) -> None:
    assert chat_run.page.input_value("#model") == MODEL


def test_answer_grows_while_it_streams(chat_run: ChatRun) -> None:
    assert len(chat_run.lengths_while_streaming) == GROWTH_STEPS


def test_page_shows_tokens_per_second(chat_run: ChatRun) -> None:
    shown = RATE.search(chat_run.rate_text)

    assert shown is not None, chat_run.rate_text
    assert int(shown[1]) > 1
    assert float(shown[2]) > 0


def test_stop_freezes_the_answer(chat_run: ChatRun) -> None:
    assert chat_run.text_at_stop
    assert chat_run.text_after_quiet == chat_run.text_at_stop
    assert chat_run.is_marked_stopped


def test_stop_frees_the_engine(chat_run: ChatRun) -> None:
    assert chat_run.running_after_stop == 0


def test_next_message_carries_the_conversation(chat_run: ChatRun) -> None:
    page = chat_run.page
    page.fill("#max-tokens", "2")
    page.fill("#prompt", "Thanks.")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.press("#prompt", "Enter")
    expect(page.locator("#send")).to_be_enabled(timeout=STREAM_TIMEOUT_S * 1000)

    messages = json.loads(sent.value.post_data or "{}")["messages"]
    assert messages == [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": chat_run.text_at_stop},
        {"role": "user", "content": "Thanks."},
    ]


def test_page_fetches_only_from_its_server(
    chat_run: ChatRun, live_server: LiveServer
) -> None:
    assert chat_run.requested_urls
    assert all(url.startswith(live_server.base_url) for url in chat_run.requested_urls)


def _models_behind_a_key(route: Route) -> None:
    """Answers ``/v1/models`` as a server with the key ``sesame`` would."""
    if route.request.headers.get("authorization") != "Bearer sesame":
        error = {"message": "missing API key", "type": "invalid_request_error"}
        route.fulfill(status=401, json={"error": error})
        return
    route.fulfill(json={"object": "list", "data": [{"id": "keyed", "object": "model"}]})


def test_page_asks_for_a_key_and_sends_it(
    browser: Browser, live_server: LiveServer
) -> None:
    page = browser.new_page()
    page.route("**/v1/models", _models_behind_a_key)
    page.goto(f"{live_server.base_url}/")
    expect(page.locator("#api-key")).to_be_visible()

    page.fill("#api-key", "sesame")
    page.click("#save-key")

    expect(page.locator("#model option[value='keyed']")).to_be_attached()
    page.close()
