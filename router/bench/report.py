"""Reporting a run: the console table, the JSON file and the PNG of TTFT distributions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

_RULE = 50
Summary = Mapping[str, Any]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _heading(title: str) -> str:
    return f"{title:-^{_RULE}}"


def format_summary(summary: Summary) -> str:
    """One run, laid out like `vllm bench serve`'s result block."""
    lines = [f"{' ' + str(summary.get('label', 'Serving Benchmark')) + ' ':=^{_RULE}}"]

    def row(name: str, value: str) -> None:
        lines.append(f"{name:<40} {value:<10}")

    row("Load:", str(summary.get("load", "-")))
    row("Sent requests:", str(summary["sent"]))
    row("Successful requests:", str(summary["completed"]))
    row("Failed requests:", str(summary["errors"]))
    row("Benchmark duration (s):", _plain(summary["duration"]))
    row("Total input tokens:", str(summary["total_input_tokens"]))
    row("Total generated tokens:", str(summary["total_output_tokens"]))
    row("Request throughput (req/s):", _plain(summary["request_throughput"]))
    row("Output token throughput (tok/s):", _plain(summary["output_throughput"]))
    titles = {
        "ttft": "Time to First Token",
        "tpot": "Time per Output Token (excl. 1st token)",
        "itl": "Inter-token Latency",
        "e2el": "End-to-end Latency",
    }
    for metric, title in titles.items():
        lines.append(_heading(title))
        name = metric.upper()
        row(f"Mean {name} (ms):", _ms(summary[f"mean_{metric}_ms"]))
        row(f"Median {name} (ms):", _ms(summary[f"median_{metric}_ms"]))
        row(f"P90 {name} (ms):", _ms(summary[f"p90_{metric}_ms"]))
        row(f"P99 {name} (ms):", _ms(summary[f"p99_{metric}_ms"]))
    lines.append(_heading("Prefix Cache and Routing"))
    row("Cached prompt tokens (usage):", _share(summary["cached_token_share"]))
    row("Requests with cached tokens (usage):", _share(summary["usage_hit_rate"]))
    row("X-DI-Cache hit rate:", _share(summary["di_cache_hit_rate"]))
    row("Oracle hit rate:", _share(summary["oracle_hit_rate"]))
    row("Replica spread (max/mean):", _plain(summary["replica_spread"]))
    lines.append("=" * _RULE)
    if summary["errors"]:
        first = next(message for message in summary["error_messages"] if message)
        lines.append(f"first error: {first}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    key: str
    show: Callable[[Any], str]
    ratio: bool  # print each run's value over the baseline's


COMPARE_ROWS = (
    Row("completed / errors", "", _plain, False),
    Row("TTFT mean (ms)", "mean_ttft_ms", _ms, True),
    Row("TTFT p50 (ms)", "median_ttft_ms", _ms, True),
    Row("TTFT p90 (ms)", "p90_ttft_ms", _ms, True),
    Row("TTFT p99 (ms)", "p99_ttft_ms", _ms, True),
    Row("TPOT p50 (ms)", "median_tpot_ms", _ms, True),
    Row("ITL p50 (ms)", "median_itl_ms", _ms, True),
    Row("E2EL p50 (ms)", "median_e2el_ms", _ms, True),
    Row("request throughput (req/s)", "request_throughput", _plain, True),
    Row("output throughput (tok/s)", "output_throughput", _plain, True),
    Row("cached prompt tokens (usage)", "cached_token_share", _share, False),
    Row("requests with cached tokens", "usage_hit_rate", _share, False),
    Row("X-DI-Cache hit rate", "di_cache_hit_rate", _share, False),
    Row("oracle hit rate", "oracle_hit_rate", _share, False),
    Row("oracle cached share", "oracle_cached_share", _share, False),
    Row("replica spread (max/mean)", "replica_spread", _plain, False),
    Row("duration (s)", "duration", _plain, False),
)


def ratio(value: Any, baseline: Any) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return float(value) / float(baseline)


def format_comparison(summaries: Mapping[str, Summary], baseline: str) -> str:
    """One table, a column per configuration; latencies and throughputs also as a ratio to
    the baseline's (x times the baseline's value)."""
    names = list(summaries)
    table = [["metric", *names]]
    base = summaries[baseline]
    for row in COMPARE_ROWS:
        cells = [row.name]
        for name in names:
            summary = summaries[name]
            if not row.key:
                cells.append(f"{summary['completed']} / {summary['errors']}")
                continue
            cell = row.show(summary[row.key])
            times = ratio(summary[row.key], base[row.key]) if row.ratio else None
            if name != baseline and times is not None:
                cell += f" ({times:.2f}x)"
            cells.append(cell)
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    out = []
    for number, line in enumerate(table):
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join([first, *rest]))
        if number == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")


def _points(summary: Summary) -> tuple[list[float], list[float]]:
    """(send time s, TTFT ms) of each completed request."""
    pairs = [
        (start, ttft * 1000)
        for start, ttft in zip(summary["start_times"], summary["ttfts"], strict=True)
        if start is not None and ttft is not None
    ]
    return [start for start, _ in pairs], [ttft for _, ttft in pairs]


def _log_axis(axis: Any) -> None:
    """Label a log axis at 1, 2 and 5 times powers of ten, in plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def write_plot(path: Path, summaries: Mapping[str, Summary], title: str = "") -> None:
    """TTFT CDF per configuration (left) and each request's TTFT by send time (right)."""
    # The object API on an Agg canvas: no pyplot, so no global backend or figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(figure)
    cdf, timeline = figure.subplots(1, 2)
    for name, summary in summaries.items():
        starts, ttfts = _points(summary)
        if not ttfts:
            continue
        ordered = sorted(ttfts)
        shares = [(rank + 1) / len(ordered) for rank in range(len(ordered))]
        cdf.step(ordered, shares, where="post", label=name)
        timeline.scatter(starts, ttfts, s=10, alpha=0.7, label=name)
    cdf.set(xscale="log", xlabel="TTFT (ms, log scale)", ylabel="share of requests")
    cdf.set_title("TTFT CDF")
    timeline.set(yscale="log", xlabel="send time (s)", ylabel="TTFT (ms, log scale)")
    timeline.set_title("TTFT over time")
    # After set(): choosing a scale installs its own tick locators.
    _log_axis(cdf.xaxis)
    _log_axis(timeline.yaxis)
    for axes in (cdf, timeline):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
