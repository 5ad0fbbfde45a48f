"""benchmarks/gpu_bench.py runs end to end on the CPU backend (--smoke), and its pure parts are right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.model
def test_smoke_run_serves_the_synthetic_model_and_prints_the_table(tmp_path: Path) -> None:
    raw = tmp_path / "rounds.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_bench.py"), "--smoke", "--threads", "2", "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "Device: CPU (smoke run)" in out
    row = next(line for line in out.splitlines() if line.startswith("| halo serve |"))
    tok_s = float(row.split("|")[2].split()[0])
    assert tok_s > 0
    assert row.rstrip(" |").endswith("us)")  # engine-thread and process CPU per token read from /proc
    assert "tiny-n_vocab128256-q4_0-textpad.gguf" in raw.read_text()  # the 128k-vocabulary synthetic model


def test_thread_cpu_reads_this_process_and_finds_the_engine_thread() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_bench
    finally:
        sys.path.remove(str(BENCH))
    threads = gpu_bench.thread_cpu(os.getpid())
    assert os.getpid() in threads and all(cpu >= 0 for _, cpu in threads.values())
    assert gpu_bench.process_cpu(os.getpid()) >= threads[os.getpid()][1] - 0.05
    busier = {**threads, 4242: ("worker", 1e6)}
    assert gpu_bench.engine_thread(threads, busier) == 4242  # unnamed: the busiest thread
    named = {**busier, 4343: ("halo-engine", 1.0)}
    assert gpu_bench.engine_thread(threads, named) == 4343
