"""The llama.cpp backend behaves as the fake one assumes: same sampling path, same KV rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from haloserve.config.serve import ServeSettings
from haloserve.engine.backend import Span
from haloserve.engine.base import SamplingParams
from haloserve.engine.llama_backend import LlamaBackend

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def backend(model_path: Path) -> Iterator[LlamaBackend]:
    be = LlamaBackend(ServeSettings(parallel=2, ctx_size=1024, threads=2), model_path)
    yield be
    be.close()


def test_sampling_a_row_in_memory_matches_sampling_the_context(backend: LlamaBackend) -> None:
    """The fake backend samples with Sampler.sample_logits: it must pick what llama.cpp's own call picks."""
    prompt = backend.tokenizer.tokenize("The capital of France is")
    backend.seq_rm(0)
    assert backend.decode([Span(prompt, 0, 0, True)]) == 0
    idx = len(prompt) - 1
    row = backend.logits(idx).copy()
    seeded = [SamplingParams(temperature=1.5, seed=s) for s in range(6)]
    for params in [SamplingParams(temperature=0.0), *seeded]:
        a, b = backend.sampler(params, prompt), backend.sampler(params, prompt)
        try:
            assert a.sample_logits(row.copy(), 0) == backend.sample(b, idx, 0)
        finally:
            a.close()
            b.close()
    assert np.array_equal(row, backend.logits(idx))  # sampling leaves the context's row as it was


def test_positions_continue_the_cache_and_a_dropped_tail_is_recomputed(backend: LlamaBackend) -> None:
    tokens = backend.tokenizer.tokenize("one two three four five")
    backend.seq_rm(1)
    assert backend.decode([Span(tokens, 0, 1, True)]) == 0
    full = backend.logits(len(tokens) - 1).copy()
    assert backend.decode([Span(tokens[-1:], len(tokens) + 3, 1, True)]) != 0  # a gap is refused
    backend.seq_rm(1, 3, -1)
    assert backend.decode([Span(tokens[3:], 3, 1, True)]) == 0
    again = backend.logits(len(tokens) - 4)
    assert int(np.argmax(again)) == int(np.argmax(full))
