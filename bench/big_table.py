"""The ``--big`` run as a markdown table."""

from __future__ import annotations

from bench.big_run import BigReport


def render_big(report: BigReport) -> str:
    shape = report.shape
    title = (
        f"random Llama, hidden {shape.hidden}, intermediate {shape.intermediate}, "
        f"{shape.layers} layers, {shape.heads} heads, vocab {shape.vocab}, "
        f"stored as {report.dtype}"
    )
    rows = [
        ["parameters", f"{shape.parameters / 1e9:.2f} B"],
        ["on disk", _size(report.file_bytes)],
        ["streamed per sweep (decoder layers as stored)", _size(report.streamed_bytes)],
        ["written in", _seconds(report.write_s)],
        ["memory budget passed", report.max_memory or "none"],
        ["tokens generated", _text(report.completion_tokens)],
        ["time to first token (prompt sweep, from disk)", _seconds(report.ttft_s)],
        ["time per later sweep (one token each)", _seconds(report.later_sweep_s)],
        ["peak RSS (VmHWM)", _size(report.peak_rss_bytes)],
        ["peak anonymous memory", _size(report.peak_anon_bytes)],
        ["machine memory", _size(report.memory_bytes)],
        ["page cache can hold the streamed layers", _yes_no(report.fits_page_cache)],
        ["read from disk while serving (all sweeps)", _size(report.disk_read_bytes)],
        ["disk read, page cache emptied", _rate(report.cold_read_bytes_per_s)],
        ["page-cache read", _rate(report.page_cache_read_bytes_per_s)],
        ["read limit per sweep, disk", _seconds(_limit(report, cold=True))],
        ["read limit per sweep, page cache", _seconds(_limit(report, cold=False))],
        ["compute floor per token", _seconds(_compute_floor(report))],
        ["later sweeps: share of their read limit", _share(report)],
    ]
    if report.error:
        rows.append(["error", report.error])
    lines = [title, "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += [""] + [f"- {note}" for note in report.notes]
    if report.cold_read_method:
        lines.append(f"- disk read rate measured after {report.cold_read_method}")
    return "\n".join(lines) + "\n"


def _limit(report: BigReport, cold: bool) -> float | None:
    rate = report.cold_read_bytes_per_s if cold else report.page_cache_read_bytes_per_s
    return None if not rate else report.streamed_bytes / rate


def _compute_floor(report: BigReport) -> float | None:
    if not report.matmul_flops_per_s:
        return None
    return 2 * report.shape.parameters / report.matmul_flops_per_s


def _share(report: BigReport) -> str:
    """The later sweeps against the disk's limit, or the page cache's if it fits."""
    fits, sweep = report.fits_page_cache, report.later_sweep_s
    limit = _limit(report, cold=not fits) if fits is not None else None
    if limit is None or not sweep:
        return "—"
    source = "page cache" if fits else "disk"
    return f"{limit / sweep:.0%} (of the {source}'s)"


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def _size(count: int | None) -> str:
    return "—" if count is None else f"{count / 1e6:,.0f} MB"


def _rate(bytes_per_s: float | None) -> str:
    return "—" if bytes_per_s is None else f"{bytes_per_s / 1e9:.2f} GB/s"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _text(value: int | None) -> str:
    return "—" if value is None else str(value)
