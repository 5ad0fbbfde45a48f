"""benchmarks/cluster_bench.py --smoke: the discovery-cost part runs end to end and reports its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.process
def test_smoke_measures_discovery_against_a_static_list(tmp_path: Path) -> None:
    results = tmp_path / "cluster.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "cluster_bench.py"),
        "--smoke",
        "--results",
        str(results),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    row = re.search(
        r"^\| gateway added latency p50, discovery vs static \| ([-+][0-9.]+) ms \| ([-+][0-9.]+) ms \| "
        r"([-+][0-9.]+) ms \| < 0.1 ms \| (yes|no) \|$",
        out.stdout,
        re.M,
    )
    assert row, out.stdout
    added_discovery, added_static, diff = (float(row.group(i)) for i in (1, 2, 3))
    assert abs(diff - (added_discovery - added_static)) < 0.002  # the difference is of the two columns
    assert "300 sequential non-streamed requests per path" in out.stdout
    assert not results.exists()  # a smoke run saves nothing and leaves BENCHMARKS.md alone
