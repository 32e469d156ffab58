"""layerstream's rows: one stream, then many at once, through the HTTP API.

Both loads run against one server process per memory budget. Its peak memory
counts from its start, as the anchors' does from theirs: the many-streams row
therefore holds the peak of the whole process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bench.http_load import LOAD_ERRORS, LoadResult, run_load
from bench.memory import MemoryWatch
from bench.prompt import TOPICS, many_variants, solo_variants
from bench.results import Row
from bench.server_process import (
    RunningServer,
    ServerFailed,
    ServerSpec,
    fetch_residency,
    start_server,
)

logger = logging.getLogger(__name__)

_WARMUP_TOKENS = 2
# A prompt no measured stream asks, so the warm-up leaves nothing in the
# prefix cache that a measured stream could take.
_WARMUP_PROMPT = len(TOPICS) - 1


@dataclass(frozen=True)
class Setup:
    """One server configuration to measure."""

    name: str  # "part" or "full", used in row keys
    label: str  # shown in the table
    spec: ServerSpec


def layerstream_rows(
    setup: Setup, tokens: int, streams: int, timeout_s: float
) -> list[Row]:
    rows = [_row(setup, 1), _row(setup, streams)]
    try:
        server = start_server(setup.spec, timeout_s)
    except (ServerFailed, OSError) as error:
        return _failed(rows, f"server did not start: {error}")
    try:
        _measure_all(server, rows, tokens, timeout_s)
    finally:
        server.stop()
    return rows


def _row(setup: Setup, streams: int) -> Row:
    suffix = "1" if streams == 1 else "many"
    key = f"layerstream-{setup.name}-{suffix}"
    return Row(key, "layerstream", setup.label, streams)


def _measure_all(
    server: RunningServer, rows: list[Row], tokens: int, timeout_s: float
) -> None:
    with MemoryWatch(server.pid) as watch:
        try:
            run_load(server.base_url, 1, _WARMUP_TOKENS, timeout_s, _WARMUP_PROMPT)
        except LOAD_ERRORS as error:
            _failed(rows, f"warm-up failed: {type(error).__name__}: {error}")
            return
        for row in rows:
            logger.info(
                "measuring layerstream, %s, %d stream(s)", row.config, row.streams
            )
            _measure(server, row, tokens, timeout_s)
            peaks = watch.peaks()
            row.peak_rss_bytes, row.peak_anon_bytes = peaks.rss_bytes, peaks.anon_bytes


def _measure(server: RunningServer, row: Row, tokens: int, timeout_s: float) -> None:
    row.max_memory = None if server.budget is None else server.budget.max_memory
    residency = fetch_residency(server.base_url)
    row.note = residency.describe() if residency else ""
    # One stream: once per solo prompt, as the transformers row; many: once.
    firsts = solo_variants() if row.streams == 1 else [many_variants(row.streams)[0]]
    try:
        loads = [
            run_load(server.base_url, row.streams, tokens, timeout_s, first)
            for first in firsts
        ]
    except LOAD_ERRORS as error:
        row.error = f"{type(error).__name__}: {error}"
        return
    _fill(row, loads, tokens)


def _fill(row: Row, loads: list[LoadResult], tokens: int) -> None:
    load = sorted(loads, key=lambda result: result.wall_s)[len(loads) // 2]
    row.completion_tokens = load.completion_tokens
    row.wall_s = load.wall_s
    row.ttft_s = load.median_ttft_s
    row.text = loads[0].streams[0].text  # the first prompt's, as every system's
    short = [s for s in load.streams if s.completion_tokens < tokens]
    if short:
        row.note = _join(row.note, f"{len(short)} stream(s) stopped before {tokens}")
    if len(loads) > 1:
        row.note = _join(row.note, f"median of {len(loads)} runs")
    if row.streams > 1:
        row.note = _join(row.note, "TTFT is the median")


def _failed(rows: list[Row], message: str) -> list[Row]:
    for row in rows:
        row.error = message
    return rows


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second
