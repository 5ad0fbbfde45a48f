"""PNG plots of one run or several runs together (matplotlib, Agg backend, no display needed).

- ``throughput.png``: output tokens/s and requests/s against concurrency or rate;
- ``latency.png``: TTFT and TPOT, p50 (solid) and p99 (dashed), against concurrency or rate;
- ``cdf.png``: the distribution of TTFT and E2E latency per level.

With several runs, each run is one colour (the comparison plots of ``halo bench compare``).
matplotlib is the ``bench`` extra: without it, :func:`plots_available` is False and nothing is drawn.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haloserve.bench.schema import BenchResult, LevelResult


def plots_available() -> bool:
    """True when matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _x(level: LevelResult) -> float:
    return level.value if level.value is not None else float("nan")


def _axis_name(runs: Sequence[BenchResult]) -> tuple[str, bool]:
    modes = {lv.mode for r in runs for lv in r.levels}
    if modes == {"rate"}:
        return "request rate (req/s)", False
    return "concurrency (requests in flight)", True


def _xy(result: BenchResult, pick: Any) -> tuple[list[float], list[float]]:
    pts = sorted((_x(lv), pick(lv)) for lv in result.levels if lv.value is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def _style(ax: Any, xlabel: str, log: bool, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)


def write_plots(runs: Sequence[BenchResult], out_dir: Path, prefix: str = "") -> list[Path]:
    """Draw the three plots of ``runs`` into ``out_dir``; returns the files written."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    xlabel, log = _axis_name(runs)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    many = len(runs) > 1
    written: list[Path] = []

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, run in enumerate(runs):
        c = colours[i % len(colours)]
        name = run.label if many else None
        ax1.plot(*_xy(run, lambda lv: lv.metrics.output_throughput), "o-", color=c, label=name)
        ax2.plot(*_xy(run, lambda lv: lv.metrics.request_throughput), "o-", color=c, label=name)
        if any(lv.metrics.request_goodput is not None for lv in run.levels):
            xs, ys = _xy(run, lambda lv: lv.metrics.request_goodput or 0.0)
            ax2.plot(xs, ys, "s--", color=c, alpha=0.7, label=f"{run.label} goodput" if many else "goodput")
    _style(ax1, xlabel, log, "output tokens/s", "Output token throughput")
    _style(ax2, xlabel, log, "requests/s", "Request throughput")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    written.append(_save(plt, fig, out_dir / f"{prefix}throughput.png"))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, run in enumerate(runs):
        c = colours[i % len(colours)]
        tag = f"{run.label} " if many else ""
        for ax, metric in ((ax1, "ttft_ms"), (ax2, "tpot_ms")):
            ax.plot(
                *_xy(run, lambda lv, m=metric: getattr(lv.metrics, m).median),
                "o-",
                color=c,
                label=f"{tag}p50",
            )
            ax.plot(
                *_xy(run, lambda lv, m=metric: getattr(lv.metrics, m).p99), "o--", color=c, label=f"{tag}p99"
            )
    _style(ax1, xlabel, log, "ms", "Time to first token")
    _style(ax2, xlabel, log, "ms", "Time per output token (excl. 1st)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    written.append(_save(plt, fig, out_dir / f"{prefix}latency.png"))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, run in enumerate(runs):
        for j, lv in enumerate(run.levels):
            c = colours[(i if many else j) % len(colours)]
            name = f"{run.label} {lv.label}" if many else lv.label
            ok = [r for r in lv.requests if r.ok]
            for ax, values in (
                (ax1, sorted((r.ttft_s or 0) * 1000 for r in ok)),
                (ax2, sorted((r.e2el_s or 0) * 1000 for r in ok)),
            ):
                if values:
                    ys = [(k + 1) / len(values) for k in range(len(values))]
                    ax.step(
                        values,
                        ys,
                        where="post",
                        color=c,
                        alpha=0.5 + 0.5 * (j + 1) / len(run.levels),
                        label=name,
                    )
    _style(ax1, "TTFT (ms)", False, "share of requests", "TTFT distribution")
    _style(ax2, "E2E latency (ms)", False, "share of requests", "End-to-end latency distribution")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    written.append(_save(plt, fig, out_dir / f"{prefix}cdf.png"))
    return written


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
