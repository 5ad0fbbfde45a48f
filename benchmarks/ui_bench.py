"""Does an open web UI cost the API anything? halo serve c=16 throughput and gateway added latency, with
and without a browser showing the UI.

"UI browser" is Debian's chromium (headless, driven by Playwright) showing the status page, which reads
``/metrics``, ``/v1/models`` (and on the gateway ``/health``) every 2 s, reloaded every 10 s; it runs on
the same CPUs as the server and the load generator, so on a small machine its own rendering work is
part of what is measured. "UI polls" makes only the page's requests, without a browser: the server's
share. Runs alternate closed/browser/polls so drift on a shared machine hits all alike; medians.

1. **halo serve**: the bundled model (or ``--engine fake``), 16 slots, ``halo bench`` at c=16 (64
   synthetic prompts, 64 words in, 32 tokens out): output tokens/s.
2. **Gateway**: a fake upstream (own process; TTFT 20 ms, 64 tokens 2 ms apart) behind ``halo gateway``;
   160 requests, 16 streams at once, direct and through the gateway; added latency = gateway minus direct, e2e p50.

``.venv/bin/python benchmarks/ui_bench.py --rounds 3 [--write]`` (needs ``chromium``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from haloserve.bench.preflight import cpu_model
from haloserve.bench.runner import Runner
from haloserve.bundled import bundled_model_path
from haloserve.config.bench import BenchSettings
from haloserve.testing.remote import RemoteServer
from haloserve.testing.upstream_cli import spawn
from haloserve.testing.upstream_config import UpstreamConfig

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- ui:start -->", "<!-- ui:end -->"


def bench(url: str, **kw: Any) -> Any:
    """One ``halo bench`` level; its metrics."""
    values: dict[str, Any] = {"url": url, "progress": False, "plots": False, "keepalive": True, **kw}
    return asyncio.run(Runner(BenchSettings(**values).checked()).run()).levels[0].metrics


MODES = ("closed", "browser", "polls")


@contextlib.contextmanager
def ui_open(url: str, mode: str) -> Iterator[None]:
    """While the block runs: nothing (``closed``), headless chromium on ``url``/ui/#status reloaded every
    10 s (``browser``), or only the page's requests, every 2 s, from a thread (``polls``: the server's
    share of an open UI without the browser's own CPU)."""
    if mode == "closed":
        yield
        return
    stop = threading.Event()
    ready = threading.Event()

    def browse() -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url + "/ui/#status")
            ready.set()
            while not stop.wait(10):
                page.reload()
            browser.close()

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            ready.set()
            while not stop.wait(2):
                for path in ("/metrics", "/v1/models", "/health"):
                    client.get(path)

    t = threading.Thread(target=browse if mode == "browser" else poll, daemon=True)
    t.start()
    ready.wait(60)
    try:
        yield
    finally:
        stop.set()
        t.join(60)


def serve_round(srv: RemoteServer, mode: str) -> float:
    """c=16 output tokens/s of halo serve, UI open or not."""
    kw = {"concurrency": [16], "num_prompts": 64, "input_len": 64, "output_len": 32, "warmup": 0}
    with ui_open(srv.url, mode):
        m = bench(srv.url, **kw)
    assert m.failed == 0, m.first_error
    return float(m.output_throughput)


def gateway_round(upstream: str, gw: RemoteServer, mode: str) -> float:
    """Added e2e p50 latency (ms) of the gateway over the upstream, UI open on the gateway or not."""
    kw = {"concurrency": [16], "num_prompts": 160, "input_len": 32, "output_len": 64, "warmup": 16}
    with ui_open(gw.url, mode):
        direct = bench(upstream, **kw)
        via = bench(gw.url, **kw)
    assert direct.failed == 0 and via.failed == 0
    return float(via.e2el_ms.median - direct.e2el_ms.median)


def main() -> int:
    """Run the rounds, print the table, optionally write it into BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument(
        "--engine",
        choices=("llama", "fake"),
        default="llama",
        help="halo serve's engine: the bundled model, or the fake engine (10 ms a token), which leaves the "
        "CPUs to the HTTP side, where the UI's polling lands",
    )
    args = ap.parse_args()
    if not shutil.which("chromium"):
        print("ui_bench: error: chromium is not installed", file=sys.stderr)
        return 2
    serve: dict[str, list[float]] = {m: [] for m in MODES}
    added: dict[str, list[float]] = {m: [] for m in MODES}
    srv_args = ["--parallel", "16", "--ctx-size", "16384"]
    if args.engine == "fake":
        srv_args += ["--engine", "fake", "--fake-ttft", "0.02", "--fake-itl", "0.01"]
    else:
        srv_args += ["--model", str(bundled_model_path()), "--threads", "2"]
    with RemoteServer(srv_args) as srv:
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                serve[mode].append(serve_round(srv, mode))
                print(f"serve round {r} ui {mode}: {serve[mode][-1]:.1f} tok/s", flush=True)
    cfg = UpstreamConfig(ttft_ms=20, itl_ms=2, default_max_tokens=64)
    with tempfile.TemporaryDirectory() as tmp, spawn(cfg) as up:
        gw_args = ["--backend", up, "--keys-db", str(Path(tmp) / "gw.db"), "--no-access-log"]
        with RemoteServer(gw_args, command="gateway", health_path="/ready") as gw:
            for r in range(args.rounds):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    added[mode].append(gateway_round(up, gw, mode))
                    print(f"gateway round {r} ui {mode}: +{added[mode][-1]:.2f} ms", flush=True)
    text = render(serve, added, args.rounds, args.engine)
    print(text)
    if args.write:
        write_section(text)
    return 0


def render(serve: dict[str, list[float]], added: dict[str, list[float]], rounds: int, engine: str) -> str:
    """The BENCHMARKS.md section."""

    def cell(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} ({', '.join(f'{x:.1f}' for x in xs)})"

    what = "fake engine" if engine == "fake" else "bundled model"
    return "\n".join(
        [
            "## Web UI",
            "",
            f"`benchmarks/ui_bench.py`, {cpu_model()}, medians of {rounds} alternating rounds (each run in",
            "brackets). UI *browser*: headless chromium on the status page (it polls every 2 s and is",
            "reloaded every 10 s), on the same CPUs as server and load generator; UI *polls*: only the",
            "page's requests (`/metrics`, `/v1/models`, `/health` every 2 s), without a browser.",
            "",
            "| measure | UI closed | UI browser | UI polls |",
            "|---|---|---|---|",
            f"| halo serve ({what}) c=16 output tokens/s | "
            + " | ".join(cell(serve[m]) for m in MODES)
            + " |",
            "| gateway added latency, e2e p50 ms | " + " | ".join(cell(added[m]) for m in MODES) + " |",
        ]
    )


def write_section(text: str) -> None:
    """Replace the UI section of BENCHMARKS.md (appended when missing)."""
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text()
    block = f"{MARK_START}\n{text}\n{MARK_END}"
    if MARK_START in doc:
        head, rest = doc.split(MARK_START, 1)
        doc = head + block + rest.split(MARK_END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


if __name__ == "__main__":
    raise SystemExit(main())
