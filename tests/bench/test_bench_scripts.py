"""The RPC and many-models benchmarks run end to end in their --smoke mode (tiny, seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "benchmarks" / ".work"


def smoke(script: str) -> str:
    """Run ``benchmarks/<script> --smoke``; its output (the section it would write)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def row(text: str, start: str, *, figures: bool = False) -> list[str]:
    """The cells of the one row that starts with ``start`` (``figures``: whose second cell is a number)."""
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines() if ln.startswith(start)]
    if figures:
        rows = [r for r in rows if r[1].replace(".", "", 1).isdigit()]
    assert len(rows) == 1, f"no single row {start!r} in:\n{text}"
    return rows[0]


@pytest.mark.process
@pytest.mark.model
def test_rpc_bench_smoke_measures_halo_serve_alone_and_over_two_workers() -> None:
    out = smoke("rpc_bench.py")
    for setup in ("| (a) halo serve |", "| (b) halo serve --rpc |"):
        cells = row(out, setup, figures=True)
        load, decode, ttft, out_tok_s = (float(c) for c in cells[1:5])
        assert load > 0 and decode > 0 and ttft > 0 and out_tok_s > 0
    # first load, reload in a new process, self-healing reload after a worker crash (the cache on)
    loads = row(out, "| (b) halo serve --rpc | SmolLM2-135M-Instruct.Q4_1.gguf | on |")
    assert all(float(c) > 0 for c in loads[3:6])
    assert "**not measured**: skipped in --smoke" in out  # the latency part never runs in a smoke
    if (WORK / "llama-server").exists() and (WORK / "ggml-rpc-server").exists():
        assert float(row(out, "| (c) llama-server --rpc |", figures=True)[2]) > 0
        assert "| (b) / (c) decode tokens/s" in out


@pytest.mark.process
@pytest.mark.model
def test_models_bench_smoke_loads_and_evicts_on_demand() -> None:
    out = smoke("models_bench.py")
    cells = row(out, "| halo serve |")
    start, cold, warm, cold_b, evict, idle, peak = (float(c) for c in cells[1:8])
    assert min(start, cold, warm, cold_b, evict) > 0
    assert peak >= idle > 0
    assert "peak resident memory above the idle server" in out
    # two models at most: after A, A, B, C the one left out is A (least recently used)
    assert "loaded at the end: ['synth-a', 'synth-b']" in out
