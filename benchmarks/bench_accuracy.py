"""How accurate is ``halo bench``'s clock, and can one process drive 500 streams?

The fake upstream (``haloserve.testing.upstream``) runs in a child process with a known TTFT and token
interval and records the ``time.perf_counter()`` of every token write (CLOCK_MONOTONIC, shared by all
processes on Linux). The load generator runs here, exactly as ``halo bench`` runs it. For every token:

    error = time the client saw the token - time the server wrote it

which is the load generator's own timing error (loopback, event-loop lag, scheduling). Also reported:
the send lag (server receipt minus client send), and the measured TTFT/TPOT/ITL against the
configured values (this includes the fake server's own lateness, which is reported separately).

Usage: ``.venv/bin/python benchmarks/bench_accuracy.py [--runs 3] [--write]``; ``--write`` puts the
result table into BENCHMARKS.md between the ``bench:accuracy`` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import statistics
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from haloserve.bench.metrics import percentile
from haloserve.bench.preflight import cpu_model, raise_fd_limit, run_sync
from haloserve.bench.runner import Runner
from haloserve.cli.bench import RichProgress
from haloserve.config.bench import BenchSettings
from haloserve.testing.upstream_cli import spawn
from haloserve.testing.upstream_config import UpstreamConfig

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:accuracy:start -->", "<!-- bench:accuracy:end -->"


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the body with this process on ``cpus`` (None: leave the affinity alone)."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def one_run(
    streams: int,
    rounds: int,
    ttft_ms: float,
    itl_ms: float,
    tokens: int,
    spread: float,
    bar: bool = True,
    pin: bool = True,
) -> dict[str, float]:
    """Drive ``streams`` concurrent streams against a fresh fake upstream; return the error figures.

    With ``bar`` the live progress bar runs as in a terminal (drawn into a buffer): its refresh thread
    competes with the load generator for the interpreter, exactly as when a user watches a run.
    With ``pin`` (and two CPUs or more) the load generator runs on the first CPU and the fake server
    on the others, so that what is measured is the load generator's own error, not the two processes
    taking the same core from each other (a real server runs on its own cores or machine).
    """
    cfg = UpstreamConfig(ttft_ms=ttft_ms, itl_ms=itl_ms, record_timings=True)
    cpus = sorted(os.sched_getaffinity(0))
    mine, theirs = ({cpus[0]}, set(cpus[1:])) if pin and len(cpus) > 1 else (None, None)
    with pinned(mine), spawn(cfg, cpus=theirs) as url:
        settings = BenchSettings(
            url=url,
            concurrency=[streams],
            num_prompts=streams * rounds,
            input_len=32,
            output_len=tokens,
            length_dist="uniform" if spread else "fixed",
            length_spread=spread,
            warmup=0,
            progress=bar,
        )
        sink = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=120)) if bar else None
        with sink.progress if sink is not None else contextlib.nullcontext():
            result = run_sync(Runner(settings, sink).run())
        with urllib.request.urlopen(url + "/fake/timings", timeout=30) as resp:
            server = {r["id"]: r for r in json.load(resp)["requests"]}
    level = result.levels[0]
    origin = level.clock_origin_s or 0.0
    token_err: list[float] = []
    send_lag: list[float] = []
    late: list[float] = []
    for rec in level.requests:
        srv = server.get(rec.id)
        if not rec.ok or srv is None or rec.ttft_s is None:
            continue
        start = origin + rec.start_s
        client = list(itertools.accumulate([start + rec.ttft_s, *rec.itl_s]))
        if len(client) != len(srv["tokens"]):
            raise SystemExit(f"token count mismatch for {rec.id}: {len(client)} vs {len(srv['tokens'])}")
        token_err += [(c - s) * 1000 for c, s in zip(client, srv["tokens"], strict=True)]
        send_lag.append((srv["received"] - start) * 1000)
        planned = [srv["received"] + (ttft_ms + k * itl_ms) / 1000 for k in range(len(srv["tokens"]))]
        late += [(s - p) * 1000 for s, p in zip(srv["tokens"], planned, strict=True)]
    m = level.metrics
    token_err.sort()
    send_lag.sort()
    late.sort()
    return {
        "completed": m.completed,
        "failed": m.failed,
        "peak": m.peak_concurrency,
        "err_p50": percentile(token_err, 50),
        "err_p99": percentile(token_err, 99),
        "err_max": token_err[-1],
        "lag_p50": percentile(send_lag, 50),
        "lag_p99": percentile(send_lag, 99),
        "late_p50": percentile(late, 50),
        "late_p99": percentile(late, 99),
        "ttft_p50": m.ttft_ms.median,
        "tpot_p50": m.tpot_ms.median,
        "itl_p50": m.itl_ms.median,
        "itl_p99": m.itl_ms.p99,
        "tok_s": m.output_throughput,
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of every figure over the runs."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


ROWS: list[tuple[str, str]] = [
    ("**token arrival error p99** (client saw - server wrote)", "**{err_p99:.2f} ms**"),
    ("token arrival error p50 / max", "{err_p50:.2f} / {err_max:.2f} ms"),
    (
        "request receipt lag p50 / p99 (fake's handler start - client write)",
        "{lag_p50:.2f} / {lag_p99:.2f} ms",
    ),
    ("requests completed / failed", "{completed:.0f} / {failed:.0f}"),
    ("peak concurrent streams (measured)", "{peak:.0f}"),
    ("measured TTFT p50 (configured {ttft_ms:g} ms)", "{ttft_p50:.2f} ms"),
    ("measured TPOT p50 (configured {itl_ms:g} ms)", "{tpot_p50:.2f} ms"),
    ("measured ITL p50 / p99", "{itl_p50:.2f} / {itl_p99:.2f} ms"),
    ("fake server's own lateness p50 / p99", "{late_p50:.2f} / {late_p99:.2f} ms"),
    ("output tokens/s driven", "{tok_s:,.0f}"),
]


def table(cols: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    """The Markdown section written into BENCHMARKS.md (columns: name -> median figures)."""
    cfg = f"TTFT {args.ttft_ms:g} ms, token interval {args.itl_ms:g} ms, {args.tokens} tokens a request"
    acc, shared, big = (
        cols[f"{args.streams} streams"],
        cols.get(f"{args.streams} streams, cores shared"),
        cols[f"{args.big} streams"],
    )

    def verdict(x: dict[str, float]) -> str:
        return "met" if x["err_p99"] < 2.0 else "NOT met"

    capacity = "yes" if big["completed"] == args.big and big["peak"] == args.big else "no"
    head = (
        f"**Token arrival error p99 at {args.streams} streams: {acc['err_p99']:.2f} ms (target < 2 ms: "
        f"{verdict(acc)})"
    )
    if shared is not None:
        head += f"; {shared['err_p99']:.2f} ms with the fake server sharing its core ({verdict(shared)})"
    head += (
        f". {args.big} concurrent streams from one process: {capacity} "
        f"({big['completed']:.0f} completed, peak {big['peak']:.0f} in flight).**"
    )
    lines = [
        head,
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load generator "
        "and fake upstream are separate processes on the same machine. Pinned columns: the load generator "
        "on CPU 0, the fake server on the others (what is measured is then the load generator's own error; "
        "a real server has its own cores or machine); 'cores shared': both free to run anywhere, taking the "
        f"same core from each other at times. Load average {args.load:.2f} before the runs. "
        f"Medians of {args.runs} runs.",
        "",
        "| figure | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for label, cell in ROWS:
        vals = [cell.format(**c) for c in cols.values()]
        lines.append(
            f"| {label.format(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms)} | " + " | ".join(vals) + " |"
        )
    lines += [
        "",
        f"Workload: {cfg}; {args.rounds} requests per stream at {args.streams} streams, 1 at {args.big}; "
        f"`halo bench` defaults (keep-alive connections); live progress bar "
        f"{'off' if args.no_bar else 'on, drawn to a virtual terminal'}; "
        "`.venv/bin/python benchmarks/bench_accuracy.py --write`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement, print it, and optionally write it into BENCHMARKS.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--big", type=int, default=500, help="streams of the one-process capacity run")
    p.add_argument("--rounds", type=int, default=2, help="requests per stream")
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--itl-ms", type=float, default=50.0)
    p.add_argument("--tokens", type=int, default=64, help="mean output tokens a request")
    p.add_argument("--spread", type=float, default=0.5, help="uniform length spread (0: all equal)")
    p.add_argument("--no-bar", action="store_true", help="without the live progress bar")
    p.add_argument("--no-shared", action="store_true", help="skip the run with the cores shared")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args(argv)
    raise_fd_limit()
    args.load = os.getloadavg()[0]
    plan = [(f"{args.streams} streams", args.streams, args.rounds, True)]
    if not args.no_shared:
        plan.append((f"{args.streams} streams, cores shared", args.streams, args.rounds, False))
    plan.append((f"{args.big} streams", args.big, 1, True))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in plan}
    shape = (args.ttft_ms, args.itl_ms, args.tokens, args.spread, not args.no_bar)
    for i in range(args.runs):
        for name, streams, rounds, pin in plan:
            runs[name].append(one_run(streams, rounds, *shape, pin=pin))
            print(f"run {i + 1}: {name} {runs[name][-1]}", file=sys.stderr)
    text = table({name: median_of(r) for name, r in runs.items()}, args)
    print(text)
    if args.write:
        path = ROOT / "BENCHMARKS.md"
        doc = path.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            raise SystemExit(f"{path} has no {START} ... {END} markers")
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
        path.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
