"""Engine-thread CPU time per sequence per step, at a 128k-token vocabulary, without HTTP.

Drives the real Scheduler over the real llama.cpp Backend by hand (as the engine thread does), with
``--parallel`` greedy requests of ~200 prompt tokens and ``ignore_eos``, and reads the thread's own CPU
clock (``time.thread_time_ns``) around each step and around each ``llama_decode``. After the prompts are
in, every step decodes one token for every sequence, so "per sequence per step" is the step's CPU time
outside the decode divided by the sequences in it. The numbers do not depend on how loaded the machine
is (a CPU clock, not a wall clock), only the decode's share on a CPU backend does.

Works on older trees too (it only needs ``Scheduler.step`` and ``Backend.decode``), so the same script
measures "before": ``PYTHONPATH=<old tree>/src python benchmarks/step_cost.py``. Where the tree has
``StepCost`` it also prints the split into logits/sample/output.

  .venv/bin/python benchmarks/step_cost.py --layers 2 --tokens 48 --repeats 3 [--backend-sampling on]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import GenerationRequest, SamplingParams
from haloserve.engine.llama_backend import LlamaBackend
from haloserve.engine.scheduler import Job, Scheduler

HERE = Path(__file__).resolve().parent
MODELS = HERE / ".work" / "models"
clock = time.thread_time_ns


def synth_model(shape: str, qtype: str, layers: int | None) -> Path:
    """The synthetic GGUF of ``shape`` (``layers`` repeating layers if given), written once."""
    name = f"{shape}{f'-{layers}l' if layers else ''}-{qtype}.gguf"
    path = MODELS / name
    if not path.is_file():
        from haloserve.testing.synth_gguf import write_gguf  # not in trees older than the synthetic models

        MODELS.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        extra = {"n_layer": layers} if layers else {}
        write_gguf(tmp, shape=shape, qtype=qtype, **extra)
        tmp.replace(path)
    return path


class _Stream:
    """What the scheduler reads of a RequestStream (nothing is delivered: outputs are only counted)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.admitted = False


def run_once(sched: Scheduler, backend: Any, n: int, prompt: int, tokens: int, seed: int) -> dict[str, float]:
    """One batch of ``n`` requests to the end; CPU time per sequence per step of the decode-only steps."""
    n_vocab = backend.info.n_vocab
    for i in range(n):
        toks = [1 + (seed * 7919 + i * 104729 + k * 31) % min(n_vocab - 1, 30000) for k in range(prompt)]
        req = GenerationRequest(
            request_id=f"r{seed}-{i}",
            prompt_tokens=toks,
            max_tokens=tokens,
            sampling=SamplingParams(temperature=0.0, ignore_eos=True),
        )
        sched.submit(Job(req, _Stream()))  # type: ignore[arg-type]
    inner = backend.decode
    spent = [0]

    def timed_decode(spans: Any) -> int:
        t0 = clock()
        try:
            return int(inner(spans))
        finally:
            spent[0] += clock() - t0

    backend.decode = timed_decode
    step_ns = decode_ns = seq_steps = steps = 0
    try:
        while not sched.idle:
            full = len(sched.active) == n and all(j.pending is not None for j in sched.active)
            spent[0] = 0
            t0 = clock()
            sched.step()
            t = clock() - t0
            if full:  # a pure decode step: one token for each of the n sequences
                step_ns += t
                decode_ns += spent[0]
                seq_steps += n
                steps += 1
    finally:
        del backend.decode
    outside = (step_ns - decode_ns) / max(1, seq_steps) / 1000
    return {"steps": steps, "outside_us": outside, "decode_us": decode_ns / max(1, seq_steps) / 1000}


def main(argv: list[str] | None = None) -> None:
    """Measure and print a JSON line per repeat and the medians."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="a GGUF (default: the synthetic --shape, written once)")
    p.add_argument("--shape", default="llama3-1b")
    p.add_argument("--layers", type=int, default=2, help="repeating layers (0: the shape's own)")
    p.add_argument("--qtype", default="q4_0")
    p.add_argument("--parallel", type=int, default=16)
    p.add_argument("--prompt", type=int, default=200)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend-sampling", default="off", choices=["auto", "on", "off"])
    a = p.parse_args(argv)
    model = a.model or synth_model(a.shape, a.qtype, a.layers or None)
    kw: dict[str, Any] = {"model": model, "parallel": a.parallel, "threads": a.threads}
    kw["ctx_size"] = a.parallel * (a.prompt + a.tokens + 64)
    if "backend_sampling" in ServeSettings.model_fields:
        kw["backend_sampling"] = a.backend_sampling
    settings = ServeSettings(**kw)
    backend = LlamaBackend(settings, model)
    sched = Scheduler(backend, parallel=a.parallel)
    cost = getattr(sched, "cost", None)
    if cost is not None:
        cost.detail = True
    rows = []
    try:
        for r in range(a.repeats):
            res = run_once(sched, backend, a.parallel, a.prompt, a.tokens, seed=r)
            rows.append(res)
            print(json.dumps({"repeat": r, **{k: round(v, 1) for k, v in res.items()}}), flush=True)
    finally:
        backend.close()
    load = os.getloadavg()[0]
    summary = {
        "model": model.name,
        "n_vocab": backend.info.n_vocab,
        "parallel": a.parallel,
        "backend_sampling": getattr(backend, "backend_sampling", None),
        "outside_decode_us_per_seq_step": round(statistics.median(r["outside_us"] for r in rows), 1),
        "decode_us_per_seq_step": round(statistics.median(r["decode_us"] for r in rows), 1),
        "loadavg_1m": round(load, 1),
    }
    if cost is not None:
        summary["phases_us_per_seq_step_all_steps"] = {
            k: round(v, 1) for k, v in cost.per_seq_step_us().items()
        }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
