"""``halo bench``: measure any OpenAI-compatible server (TTFT, TPOT, ITL, E2E, throughput, goodput).

``halo bench compare A.json B.json ...`` puts runs side by side with ratios and plots them together.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config.bench import BenchSettings

HELP = "Benchmark an OpenAI-compatible server: latency, throughput and goodput under load."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``halo bench`` and its ``compare`` subcommand."""
    add_settings_arguments(parser, BenchSettings)
    parser.add_argument(
        "--json", action="store_true", help="Print the metrics as JSON (no per-request data)."
    )
    sub = parser.add_subparsers(dest="bench_command", metavar="compare", parser_class=type(parser))
    cmp = sub.add_parser(
        "compare",
        help="Compare runs: ratios side by side and plots together.",
        description="Compare results.json files: each run's metrics and its ratio to the first run.",
    )
    cmp.add_argument(
        "files", nargs="+", type=Path, metavar="RESULTS.json", help="two or more results.json files"
    )
    cmp.add_argument("--output", type=Path, metavar="DIR", help="write compare.md and comparison plots here")
    cmp.add_argument(
        "--plots", action=argparse.BooleanOptionalAction, default=True, help="draw plots (default on)"
    )
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or the comparison) and render its result."""
    if getattr(args, "bench_command", None) == "compare":
        return _compare(args)
    from haloserve.bench.preflight import raise_fd_limit, run_sync
    from haloserve.bench.report import failure_reason, write_reports
    from haloserve.bench.runner import Runner
    from haloserve.cli.render import console, print_json
    from haloserve.config import load_settings
    from haloserve.errors import CommandError
    from haloserve.printable import printable

    settings = load_settings(BenchSettings, flags=settings_flags(args, BenchSettings)).checked()
    raise_fd_limit()
    err = console(stderr=True)
    sink = RichProgress(err) if settings.progress and not args.json and err.is_terminal else None
    with sink.progress if sink is not None else contextlib.nullcontext():
        result = run_sync(Runner(settings, sink).run())
    files = write_reports(result, settings.output, settings.plots) if settings.output else []
    for note in result.notes:
        err.print(f"halo bench: note: {printable(note)}", markup=False)
    if args.json:
        print_json(result.to_json_dict(raw=False))
    else:
        _print_result(result, files)
    reason = failure_reason(result)
    if reason:
        raise CommandError(reason)
    return 0


class RichProgress:
    """A live rich progress bar per level with running throughput and failures."""

    def __init__(self, con: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description:>12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=con,
            refresh_per_second=4,
        )
        self.task: Any = None
        self.t0 = 0.0
        self.done = self.failed = self.tokens = 0

    def level_started(self, label: str, total: int | None, duration: float | None) -> None:
        """Add a bar for the level."""
        import time

        self.t0 = time.perf_counter()
        self.done = self.failed = self.tokens = 0
        self.task = self.progress.add_task(label, total=total, stats="")

    def request_done(self, record: Any) -> None:
        """Advance the bar and refresh the running throughput."""
        import time

        self.done += 1
        if record.ok:
            self.tokens += record.output_tokens
        else:
            self.failed += 1
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        stats = f"{(self.done - self.failed) / elapsed:6.2f} req/s {self.tokens / elapsed:9,.1f} tok/s"
        if self.failed:
            stats += f"  [red]{self.failed} failed[/red]"
        self.progress.update(self.task, advance=1, stats=stats)

    def level_finished(self, level: Any) -> None:
        """Close the level's bar at the number of requests actually sent."""
        self.progress.update(self.task, total=len(level.requests), completed=len(level.requests))


def _print_result(result: Any, files: list[Path]) -> None:
    from rich.table import Table

    from haloserve.bench.report import COLUMNS, error_lines, level_row, token_sources
    from haloserve.cli.render import console, markup_safe
    from haloserve.printable import printable

    out = console()
    if not out.is_terminal:
        out.width = max(out.width, 160)  # files and pipes get the whole table, never squeezed columns
    table = Table(
        title=f"halo bench: {markup_safe(result.label)}",
        caption="latencies in ms, p50 / p99 (vLLM definitions)",
    )
    heads = ("level", "ok", "failed", "req/s", "out tok/s", "goodput", "TTFT", "TPOT", "ITL", "E2E")
    for i, col in enumerate(heads):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for lv in result.levels:
        row = level_row(lv)
        if lv.metrics.failed:
            row[2] = f"[red]{row[2]}[/red]"
        pairs = [f"{row[k]} / {row[k + 1]}" for k in range(6, len(COLUMNS), 2)]
        table.add_row(markup_safe(row[0]), *row[1:6], *pairs)
    out.print(table)
    out.print(token_sources(result), markup=False)
    for line in error_lines(result):  # messages come from the server under test
        out.print(f"[red]errors[/red] {markup_safe(line)}", highlight=False)
    for f in files:
        out.print(f"wrote {printable(f)}", markup=False)


def _compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from haloserve.bench.compare import compare, compare_markdown, fmt_ratio, fmt_value, unmatched_levels
    from haloserve.bench.plots import plots_available, write_plots
    from haloserve.bench.report import load_result
    from haloserve.cli.render import console, markup_safe, print_json
    from haloserve.errors import CommandError, ConfigError
    from haloserve.printable import printable

    if len(args.files) < 2:
        raise ConfigError("compare needs at least two results.json files")
    runs = [load_result(p) for p in args.files]
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):  # make labels unique so columns and legends can be told apart
        if labels.count(run.label) > 1:
            run.label = f"{run.label} [{args.files[i]}]"
    rows = compare(runs)
    if not rows:
        raise CommandError(
            "the runs share no level (compare runs made with the same --concurrency or --rate)"
        )
    if args.output:
        try:
            args.output.mkdir(parents=True, exist_ok=True)
            (args.output / "compare.md").write_text(compare_markdown(runs, rows), encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write into {args.output}: {exc.strerror or exc}") from None
        if args.plots and plots_available():
            write_plots(runs, args.output, prefix="compare_")
    if args.json:
        print_json(
            {
                "runs": [r.label for r in runs],
                "rows": [
                    {"level": r.level, "metric": r.metric, "values": r.values, "ratios": r.ratios}
                    for r in rows
                ],
            }
        )
        return 0
    out = console()
    table = Table(title="halo bench compare (ratio = run / first run)")
    table.add_column("level")
    table.add_column("metric")
    table.add_column(markup_safe(runs[0].label), justify="right")
    for run in runs[1:]:
        table.add_column(markup_safe(run.label), justify="right")
        table.add_column("ratio", justify="right")
    for row in rows:
        cells = [markup_safe(row.level), row.metric, fmt_value(row.values[0])]
        for v, r in zip(row.values[1:], row.ratios[1:], strict=True):
            better = r is not None and r != 1 and ((r > 1) == row.higher_is_better)
            colour = "green" if better else ("red" if r is not None and r != 1 else "")
            cells += [fmt_value(v), f"[{colour}]{fmt_ratio(r)}[/{colour}]" if colour else fmt_ratio(r)]
        table.add_row(*cells)
    out.print(table)
    for label in unmatched_levels(runs):
        out.print(
            f"not compared (no matching level in {printable(runs[0].label)}): {printable(label)}",
            markup=False,
        )
    if args.output:
        out.print(f"wrote {printable(args.output / 'compare.md')}", markup=False)
    return 0
