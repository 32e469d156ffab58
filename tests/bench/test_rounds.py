"""Rounds of one benchmark run: median rows, and targets from paired ratios."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.results import AIRLLM_B1, LS_PART_1, TF_B1, Report, Row, combine
from bench.targets import paired_ratio


def _row(key: str, tokens_per_s: float, peak: int = 100) -> Row:
    # 100 tokens in 100 / tokens_per_s seconds.
    return Row(key, key, "config", 1, 100, 100 / tokens_per_s, peak_rss_bytes=peak)


def _round(*rows: Row) -> Report:
    return Report("model", 32, 16, rows=list(rows))


ROUNDS = [
    _round(_row(TF_B1, 10), _row(LS_PART_1, 12, peak=300), _row(AIRLLM_B1, 0.1)),
    _round(_row(TF_B1, 20), _row(LS_PART_1, 22, peak=100)),
    _round(_row(TF_B1, 30), _row(LS_PART_1, 45, peak=200)),
]


def test_each_row_is_its_median_round_with_the_highest_peak() -> None:
    report = combine(ROUNDS)
    row = report.row(LS_PART_1)
    assert row.tokens_per_s == pytest.approx(22)
    assert row.peak_rss_bytes == 300
    assert "median of 3 rounds" in row.note


def test_a_target_takes_the_median_of_the_rounds_ratios() -> None:
    report = combine(ROUNDS)
    # Ratios 1.2, 1.1 and 1.5 by round; the medians' ratio would be 1.1.
    assert paired_ratio(report, LS_PART_1, TF_B1) == pytest.approx(1.2)


def test_a_row_of_the_first_round_only_pairs_with_every_round() -> None:
    report = combine(ROUNDS)
    # AirLLM ran once; each round's one stream is compared with it.
    assert paired_ratio(report, LS_PART_1, AIRLLM_B1) == pytest.approx(220)


def test_one_round_is_its_own_report() -> None:
    assert combine(ROUNDS[:1]) is ROUNDS[0]
    assert paired_ratio(ROUNDS[0], LS_PART_1, TF_B1) == pytest.approx(1.2)


def test_zero_rounds_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--rounds", "0"])
    assert "--rounds" in capsys.readouterr().err
