"""What the child-process engine of ``halo serve --rpc`` costs per engine step.

The same scheduler runs over the fake backend (no model: a decode costs nothing, so what is left is the
engine's own overhead), once in-process (:class:`LlamaEngine`, as ``halo serve`` without ``--rpc``) and
once in a child process (:class:`ProcessEngine`, as with ``--rpc``): one pipe message per step from the
child, one wake-up of the event loop per step. The difference per step is the price of the pipe.

Usage: ``.venv/bin/python benchmarks/rpc_ipc.py [--tokens 400] [--runs 3]``. Prints, for c=1 and c=8,
the median microseconds per step of each engine and their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import GenerationRequest, SamplingParams
from haloserve.engine.fake_backend import FakeBackend
from haloserve.engine.llama_engine import LlamaEngine
from haloserve.engine.process import ProcessEngine
from haloserve.testing.fake_child import FakeSpec


def request(i: int, tokens: int) -> GenerationRequest:
    """A greedy request that runs for exactly ``tokens`` tokens."""
    return GenerationRequest(
        request_id=str(i),
        prompt_tokens=[ord("1")],
        max_tokens=tokens,
        sampling=SamplingParams(temperature=0.0, ignore_eos=True),
    )


async def run(engine: Any, concurrency: int, tokens: int) -> float:
    """Seconds for ``concurrency`` streams of ``tokens`` tokens each, read to the end."""

    async def one(i: int) -> None:
        async for _ in engine.generate(request(i, tokens)):
            pass

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(concurrency)))
    return time.perf_counter() - t0


def measure(engine: Any, concurrency: int, tokens: int, runs: int) -> float:
    """Median microseconds per engine step (one token per stream per step)."""
    asyncio.run(run(engine, concurrency, 8))  # warm up
    return statistics.median(asyncio.run(run(engine, concurrency, tokens)) for _ in range(runs)) / tokens * 1e6


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    settings = ServeSettings(parallel=8, ctx_size=8192)  # type: ignore[call-arg]
    local = LlamaEngine(settings, Path("fake.gguf"), backend=FakeBackend(parallel=8, n_ctx=8192))
    remote = ProcessEngine(settings, FakeSpec(settings))
    local.start()
    remote.start()
    try:
        print("concurrency  in-process us/step  child-process us/step  difference us/step")
        for c in (1, 8):
            a = measure(local, c, args.tokens, args.runs)
            b = measure(remote, c, args.tokens, args.runs)
            print(f"{c:>11}  {a:>18.0f}  {b:>21.0f}  {b - a:>18.0f}")
    finally:
        local.stop()
        remote.stop()


if __name__ == "__main__":
    main()
