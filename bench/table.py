"""A report as markdown tables: the systems side by side, limits, targets."""

from __future__ import annotations

from bench.results import TF_B1, TF_B16, Limits, Report, Row, ratio
from bench.targets import Target

_ROW_HEADER = (
    "system",
    "config",
    "streams",
    "tokens",
    "tokens/s",
    "TTFT",
    "peak RSS",
    "peak anon",
    "× tf b1",
    "× tf batch",
    "of roofline",
    "same text",
    "note",
)


def render(report: Report, targets: list[Target]) -> str:
    parts = [
        f"model: {report.model}; {report.tokens} tokens greedy per stream",
        _markdown(_ROW_HEADER, [_row_cells(report, row) for row in report.rows]),
    ]
    if report.limits is not None:
        parts.append(_limits_table(report.limits, report.streams))
    parts.append(_targets_table(targets))
    if report.notes:
        parts.append("\n".join(f"- {note}" for note in report.notes))
    return "\n\n".join(parts) + "\n"


def _row_cells(report: Report, row: Row) -> list[str]:
    if row.error:
        return [row.system, row.config, str(row.streams), *["—"] * 9, row.error]
    speed = row.tokens_per_s
    batch_base = report.tokens_per_s(TF_B16) if row.streams > 1 else None
    roofline = (
        None
        if report.limits is None
        else report.limits.roofline_tokens_per_s(row.streams)
    )
    return [
        row.system,
        row.config,
        str(row.streams),
        _count(row.completion_tokens),
        _number(speed, "{:.2f}"),
        _number(row.ttft_s, "{:.2f} s"),
        _size(row.peak_rss_bytes),
        _size(row.peak_anon_bytes),
        _number(ratio(speed, report.tokens_per_s(TF_B1)), "{:.2f}×"),
        _number(ratio(speed, batch_base), "{:.2f}×"),
        _number(ratio(speed, roofline), "{:.0%}"),
        _same_text(row, report.row(TF_B1)),
        row.note,
    ]


def _limits_table(limits: Limits, streams: int) -> str:
    rows = [
        ["weights read per sweep", _size(limits.weight_bytes)],
        ["memory copy (read + write)", _rate(limits.memory_copy_bytes_per_s)],
        ["page-cache file read", _rate(limits.page_cache_read_bytes_per_s)],
        ["float32 matmul", f"{limits.matmul_flops_per_s / 1e9:.0f} GFLOP/s"],
        ["roofline, 1 stream", f"{limits.roofline_tokens_per_s(1):.1f} tokens/s"],
        [
            f"roofline, {streams} streams",
            f"{limits.roofline_tokens_per_s(streams):.1f} tokens/s",
        ],
    ]
    return _markdown(("physical limit", "value"), rows)


def _targets_table(targets: list[Target]) -> str:
    rows = [
        [t.name, _number(t.measured, "{:.2f}×"), f"{t.goal:g}×", t.status, t.note]
        for t in targets
    ]
    return _markdown(("target", "measured", "goal", "result", "note"), rows)


def _same_text(row: Row, reference: Row | None) -> str:
    """Whether a row's greedy text agrees with transformers' (as far as both go)."""
    if row.text is None or reference is None or reference.text is None:
        return "—"
    if row is reference:
        return "ref"
    shorter, longer = sorted((row.text, reference.text), key=len)
    return "yes" if longer.startswith(shorter) else "no"


def _markdown(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return "\n".join(lines)


def _number(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _count(value: int | None) -> str:
    return "—" if value is None else str(value)


def _size(count: int | None) -> str:
    return "—" if count is None else f"{count / 1e6:,.0f} MB"


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e9:.1f} GB/s"
