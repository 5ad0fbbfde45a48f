"""``halo bench compare``: several runs side by side, with ratios against the first (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from haloserve.bench.schema import BenchResult, LevelMetrics, LevelResult

# (name, getter, higher is better)
METRICS: tuple[tuple[str, Callable[[LevelMetrics], float | None], bool], ...] = (
    ("output tok/s", lambda m: m.output_throughput, True),
    ("requests/s", lambda m: m.request_throughput, True),
    ("goodput req/s", lambda m: m.request_goodput, True),
    ("TTFT p50 ms", lambda m: m.ttft_ms.median, False),
    ("TTFT p99 ms", lambda m: m.ttft_ms.p99, False),
    ("TPOT p50 ms", lambda m: m.tpot_ms.median, False),
    ("TPOT p99 ms", lambda m: m.tpot_ms.p99, False),
    ("ITL p50 ms", lambda m: m.itl_ms.median, False),
    ("E2E p50 ms", lambda m: m.e2el_ms.median, False),
    ("E2E p99 ms", lambda m: m.e2el_ms.p99, False),
    ("failed", lambda m: float(m.failed), False),
)


@dataclass(frozen=True)
class CompareRow:
    """One metric at one level: each run's value and its ratio to the first run's."""

    level: str
    metric: str
    higher_is_better: bool
    values: list[float | None]
    ratios: list[float | None]


def level_key(level: LevelResult) -> tuple[str, float | None]:
    """Levels of different runs match on mode and value (``c=16`` with ``c=16``)."""
    return (level.mode, level.value)


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def compare(runs: Sequence[BenchResult]) -> list[CompareRow]:
    """Rows for every metric at every level the first run shares with at least one other run."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    by_key = [{level_key(lv): lv for lv in run.levels} for run in runs]
    rows: list[CompareRow] = []
    for base_level in runs[0].levels:
        key = level_key(base_level)
        if not any(key in other for other in by_key[1:]):
            continue
        levels = [m.get(key) for m in by_key]
        for name, get, higher in METRICS:
            values = [get(lv.metrics) if lv is not None else None for lv in levels]
            if all(v is None for v in values):
                continue
            rows.append(
                CompareRow(base_level.label, name, higher, values, [ratio(v, values[0]) for v in values])
            )
    return rows


def unmatched_levels(runs: Sequence[BenchResult]) -> list[str]:
    """Labels of levels of later runs that the first run does not have (left out of the table)."""
    base = {level_key(lv) for lv in runs[0].levels}
    return sorted(
        {f"{run.label}: {lv.label}" for run in runs[1:] for lv in run.levels if level_key(lv) not in base}
    )


def compare_markdown(runs: Sequence[BenchResult], rows: list[CompareRow]) -> str:
    """The comparison as a Markdown table (ratios are each run over the first)."""
    head = ["level", "metric", runs[0].label]
    for run in runs[1:]:
        head += [run.label, "ratio"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.level, row.metric, fmt_value(row.values[0])]
        for v, r in zip(row.values[1:], row.ratios[1:], strict=True):
            cells += [fmt_value(v), fmt_ratio(r)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def fmt_value(v: float | None) -> str:
    """A metric value for tables."""
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}"


def fmt_ratio(r: float | None) -> str:
    """A ratio for tables: ``1.84x``."""
    return "-" if r is None else f"{r:.2f}x"
