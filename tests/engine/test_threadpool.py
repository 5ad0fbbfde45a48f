"""The context computes on persistent CPU worker threads (as llama.cpp's tools attach them), not on
threads created and joined for every decode step."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from haloserve.bundled import bundled_model_path
from haloserve.engine.llamacpp import Batch, ContextParams, LlamaContext, LlamaModel

pytestmark = pytest.mark.model

TASKS = Path("/proc/self/task")


def _cpu_ticks() -> dict[int, int]:
    """user + system clock ticks of every thread of this process."""
    out = {}
    for tid in os.listdir(TASKS):
        try:
            fields = (TASKS / tid / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that just ended
            continue
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(bundled_model_path())
    yield m
    m.close()


def _decode_prompts(ctx: LlamaContext, model: LlamaModel, rounds: int) -> None:
    batch = Batch(ctx.n_batch)
    tokens = model.tokenize("The quick brown fox jumps over the lazy dog. " * 12, add_special=True)
    for _ in range(rounds):
        ctx.clear()
        batch.clear()
        batch.add(tokens, 0, 0, True)
        assert ctx.decode(batch) == 0


@pytest.mark.parametrize(("threads", "threads_batch", "workers"), [(2, 2, 1), (1, 2, 1)])
def test_decode_runs_on_persistent_workers(
    model: LlamaModel, threads: int, threads_batch: int, workers: int
) -> None:
    before = set(_cpu_ticks())
    ctx = LlamaContext(
        model, ContextParams(n_ctx=512, n_seq_max=1, n_threads=threads, n_threads_batch=threads_batch, poll=0)
    )
    try:
        assert ctx.threadpools.attached
        started = _cpu_ticks()
        new = set(started) - before
        assert len(new) == workers  # n_threads - 1 per pool (one pool when both counts agree)
        _decode_prompts(ctx, model, rounds=8)
        after = _cpu_ticks()
        assert new <= set(after)  # the same threads, still there after every step
        assert sum(after[t] - started[t] for t in new) > 0  # and they did the work
    finally:
        ctx.close()
    assert not new & set(_cpu_ticks())  # closing stops them
