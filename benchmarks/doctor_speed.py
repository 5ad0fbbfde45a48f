"""How long ``halo doctor`` takes and how big its snapshots are, on the fixture trees and this host.

    .venv/bin/python benchmarks/doctor_speed.py [--repeat 20]

Prints one line per root: median and max wall time of a full run (all checks), and the size of a
snapshot of it. Doctor runs on every `halo deploy` preflight, so it should stay well under a second.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from haloserve.doctor import diagnose, facts_for, open_root, options_for
from haloserve.doctor.snapshot import Recorder, write_snapshot

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "doctor" / "fixtures"


def measure(spec: str | Path, repeat: int) -> tuple[float, float, int, int]:
    """Median and max seconds of a full run, snapshot bytes and entries."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        root = open_root(spec)
        diagnose(root, facts_for(root), options_for(root))
        times.append(time.perf_counter() - start)
    root = open_root(spec)
    facts = facts_for(root)
    options = options_for(root)
    recorder = Recorder(root)
    diagnose(recorder, facts, options)
    with tempfile.TemporaryDirectory() as tmp:
        info = write_snapshot(recorder, facts, Path(tmp) / "s.tar.gz", options.models_dir)
    return statistics.median(times), max(times), info.size, info.files


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    roots: list[tuple[str, str | Path]] = [(p.name, p) for p in sorted(FIXTURES.iterdir()) if p.is_dir()]
    roots.append(("live host", "/"))
    print(f"{'root':22} {'median ms':>10} {'max ms':>8} {'snapshot':>10} {'entries':>8}")
    for name, spec in roots:
        median, worst, size, files = measure(spec, args.repeat)
        print(f"{name:22} {median * 1000:10.1f} {worst * 1000:8.1f} {size:9d}B {files:8d}")


if __name__ == "__main__":
    main()
