"""Backend (in-graph) sampling, the arg-max path and llama.cpp's CPU chain pick the same tokens; requests
that need the row of logits or CPU-only samplers fall back to the CPU chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import GenerationRequest, Output, SamplingParams
from haloserve.engine.llama_backend import LlamaBackend
from haloserve.engine.scheduler import Job, Scheduler
from haloserve.testing.synth_gguf import write_gguf

pytestmark = pytest.mark.model

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,"]


class _Stream:
    """What the scheduler reads of a RequestStream."""

    def __init__(self) -> None:
        self.cancelled = False
        self.admitted = False


def generate(be: LlamaBackend, reqs: list[GenerationRequest]) -> tuple[list[list[int]], list[list[Output]]]:
    """Run ``reqs`` together on ``be`` to the end; the tokens and outputs of each."""
    for seq in range(be.info.n_parallel):
        be.seq_rm(seq)  # a fresh scheduler: nothing cached
    sched = Scheduler(be, parallel=be.info.n_parallel)
    streams = [_Stream() for _ in reqs]
    for req, st in zip(reqs, streams, strict=True):
        sched.submit(Job(req, st))  # type: ignore[arg-type]
    outs: dict[int, list[Output]] = {id(s): [] for s in streams}
    for _ in range(1000):
        if sched.idle:
            break
        for stream, out in sched.step():
            outs[id(stream)].append(out)
    assert sched.idle
    got = [outs[id(s)] for s in streams]
    for o in got:
        assert o[-1].finish_reason in ("length", "stop"), o[-1]
    return [[t for out in o for t in out.token_ids] for o in got], got


def request(i: int, prompt: list[int], params: SamplingParams, **kw: Any) -> GenerationRequest:
    return GenerationRequest(request_id=f"r{i}", prompt_tokens=prompt, max_tokens=4, sampling=params, **kw)


def _backend(path: Path, mode: str) -> LlamaBackend:
    return LlamaBackend(ServeSettings(parallel=2, ctx_size=1024, threads=2, backend_sampling=mode), path)


@pytest.fixture(scope="module")
def pair(model_path: Path) -> Iterator[tuple[LlamaBackend, LlamaBackend]]:
    on, off = _backend(model_path, "on"), _backend(model_path, "off")
    yield on, off
    on.close()
    off.close()


def prompts(be: LlamaBackend) -> list[list[int]]:
    return [be.tokenizer.tokenize(p) for p in PROMPTS]


def test_auto_keeps_sampling_on_the_cpu_backend(pair: tuple[LlamaBackend, LlamaBackend]) -> None:
    on, off = pair
    assert on.backend_sampling and not off.backend_sampling
    assert on.info.extra["backend_sampling"] is True
    auto = ServeSettings(parallel=2, ctx_size=1024, threads=2)
    assert auto.backend_sampling == "auto"  # and LlamaBackend resolves auto to off without a GPU (below)


def test_greedy_is_the_same_in_the_graph_by_argmax_and_by_the_chain(
    pair: tuple[LlamaBackend, LlamaBackend],
) -> None:
    on, off = pair
    ps = prompts(on)
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)
    # a zero logit bias keeps the request on llama.cpp's CPU chain (no arg-max, no graph sampler)
    chained = SamplingParams(temperature=0.0, ignore_eos=True, logit_bias={5: 0.0})
    in_graph, _ = generate(on, [request(i, p, greedy) for i, p in enumerate(ps)])
    by_argmax, _ = generate(off, [request(i, p, greedy) for i, p in enumerate(ps)])
    by_chain, _ = generate(off, [request(i, p, chained) for i, p in enumerate(ps)])
    assert in_graph == by_argmax == by_chain
    assert all(len(t) == 4 for t in in_graph)


def test_a_seeded_request_matches_the_cpu_chain(pair: tuple[LlamaBackend, LlamaBackend]) -> None:
    on, off = pair
    ps = prompts(on)
    seeded = [SamplingParams(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, seed=s) for s in (1, 2)]
    in_graph, _ = generate(on, [request(i, ps[i], seeded[i]) for i in range(2)])
    cpu, _ = generate(off, [request(i, ps[i], seeded[i]) for i in range(2)])
    assert in_graph == cpu


def test_cpu_only_requests_are_not_attached_to_the_graph(pair: tuple[LlamaBackend, LlamaBackend]) -> None:
    on, _ = pair
    plain = SamplingParams(temperature=0.7, seed=3)
    cases = {
        "offloadable": (plain, False, True),
        "grammar or logprobs": (plain, True, False),
        "penalties": (SamplingParams(repeat_penalty=1.3), False, False),
        "logit_bias": (SamplingParams(logit_bias={7: -5.0}), False, False),
        "min_tokens": (SamplingParams(min_tokens=3), False, False),
    }
    for name, (params, cpu_only, attached) in cases.items():
        smp = on.sampler(params, [1, 2, 3], seq=1, cpu_only=cpu_only)
        try:
            assert (smp.attached is not None) is attached, name
        finally:
            smp.close()
        assert smp.attached is None  # closing detaches it from the context first


def test_a_logprobs_request_beside_a_graph_sampled_one_gets_its_row(
    pair: tuple[LlamaBackend, LlamaBackend],
) -> None:
    on, off = pair
    ps = prompts(on)
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)
    pen = SamplingParams(temperature=0.0, ignore_eos=True, repeat_penalty=1.5, logit_bias={9: -3.0})
    mixed = [request(0, ps[0], greedy), request(1, ps[1], greedy, logprobs=2)]
    toks_on, outs_on = generate(on, mixed)
    toks_off, outs_off = generate(off, [request(0, ps[0], greedy), request(1, ps[1], greedy, logprobs=2)])
    assert toks_on == toks_off
    lps = [o.logprobs[0] for o in outs_on[1] if o.logprobs]
    assert len(lps) == 4 and all(len(lp.top) == 2 and lp.logprob <= 0.0 for lp in lps)
    assert [o.logprobs for o in outs_on[1]] == [o.logprobs for o in outs_off[1]]
    penalised_on, _ = generate(on, [request(0, ps[0], pen)])
    penalised_off, _ = generate(off, [request(0, ps[0], pen)])
    assert penalised_on == penalised_off


def test_the_synthetic_128k_vocabulary_model_samples_the_same_in_the_graph(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "v128k.gguf", shape="tiny", qtype="q4_0", n_vocab=128256)
    on, off = _backend(path, "on"), _backend(path, "auto")
    try:
        assert on.info.n_vocab == 128256 and not off.backend_sampling
        ps = prompts(on)
        greedy = SamplingParams(temperature=0.0, ignore_eos=True)
        # top-k first, as in the defaults: a draw over all 128k near-equal probabilities can land on a
        # neighbouring id, the graph summing the floats in another order than the CPU
        seeded = SamplingParams(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0, seed=11)
        a, _ = generate(on, [request(0, ps[0], greedy), request(1, ps[1], seeded)])
        b, _ = generate(off, [request(0, ps[0], greedy), request(1, ps[1], seeded)])
        assert a[0] == b[0]
        assert a[1] == b[1]
    finally:
        on.close()
        off.close()
