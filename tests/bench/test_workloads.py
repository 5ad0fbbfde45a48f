"""Workloads, arrivals and level plans (pure)."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from haloserve.bench.runner import arrival_offsets, plan_levels
from haloserve.bench.workloads import (
    WORKLOADS,
    WorkloadSpec,
    build_messages,
    load_dataset,
    sample_length,
)
from haloserve.config.bench import BenchSettings
from haloserve.errors import ConfigError


def test_lengths_fixed_and_distributed() -> None:
    rng = random.Random(1)
    assert {sample_length(100, "fixed", 0.5, rng) for _ in range(20)} == {100}
    uni = [sample_length(100, "uniform", 0.25, rng) for _ in range(2000)]
    assert min(uni) >= 75 and max(uni) <= 125 and abs(statistics.mean(uni) - 100) < 3
    norm = [sample_length(100, "normal", 0.2, rng) for _ in range(4000)]
    assert abs(statistics.stdev(norm) - 20) < 2
    exp = [sample_length(100, "exponential", 0.0, rng) for _ in range(4000)]
    assert min(exp) >= 1 and abs(statistics.mean(exp) - 100) < 8


def test_synthetic_prompts_have_the_asked_word_count() -> None:
    convos = WORKLOADS["synthetic"](WorkloadSpec(input_len=50, output_len=7), random.Random(0))
    c = next(convos)
    assert len(c.turns[0].split()) == 50 and c.output_lens == [7] and c.system is None
    assert next(convos).turns != c.turns


def test_shared_prefix_reuses_a_few_system_prompts() -> None:
    spec = WorkloadSpec(input_len=5, prefix_len=40, num_prefixes=3)
    convos = WORKLOADS["shared-prefix"](spec, random.Random(0))
    systems = {next(convos).system for _ in range(60)}
    assert len(systems) == 3 and all(s and len(s.split()) == 44 for s in systems)


def test_multi_turn_history_carries_real_replies() -> None:
    c = next(WORKLOADS["multi-turn"](WorkloadSpec(input_len=3, turns=3), random.Random(0)))
    assert len(c.turns) == 3
    msgs = build_messages(c, 2, ["first reply", "second reply"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == "first reply" and msgs[-1]["content"] == c.turns[2]


def test_dataset_jsonl_sharegpt_and_messages(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "hello there", "output_len": 5},
        {"messages": [{"role": "user", "content": "hi"}]},
        {
            "conversations": [
                {"from": "system", "value": "be brief"},
                {"from": "human", "value": "q1"},
                {"from": "gpt", "value": "a b c"},
                {"from": "human", "value": "q2"},
            ]
        },
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    a, b, c = load_dataset(f, WorkloadSpec(turns=4))
    assert a.turns == ["hello there"] and a.output_lens == [5]
    assert b.messages == [{"role": "user", "content": "hi"}] and b.output_lens == [128]
    assert c.system == "be brief" and c.turns == ["q1", "q2"] and c.output_lens == [3, 128]
    arr = tmp_path / "sharegpt.json"
    arr.write_text(json.dumps([lines[2]]))
    (only,) = load_dataset(arr, WorkloadSpec(turns=1, output_len=9))
    assert only.turns == ["q1"] and only.output_lens == [9]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"prompt": "a"}\nnot json\n', "p.jsonl:2"),
        ('{"x": 1}\n', "needs 'prompt'"),
        ("", "no usable prompt"),
    ],
)
def test_dataset_errors_name_the_line(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        load_dataset(f, WorkloadSpec())
    with pytest.raises(ConfigError, match="not found"):
        load_dataset(tmp_path / "missing.jsonl", WorkloadSpec())


def test_arrivals_follow_vllm_gamma_and_rescaling() -> None:
    rng = random.Random(3)
    offs = arrival_offsets(1000, 10.0, 1.0, rng)
    assert offs == sorted(offs) and offs[-1] == pytest.approx(100.0)  # N / rate, as vLLM rescales
    gaps = [b - a for a, b in zip([0.0, *offs], offs, strict=False)]
    cv_poisson = statistics.stdev(gaps) / statistics.mean(gaps)
    steady = arrival_offsets(1000, 10.0, 8.0, random.Random(3))
    gaps_s = [b - a for a, b in zip([0.0, *steady], steady, strict=False)]
    cv_steady = statistics.stdev(gaps_s) / statistics.mean(gaps_s)
    assert 0.85 < cv_poisson < 1.15 and 0.25 < cv_steady < 0.45  # gamma CV = 1/sqrt(shape)
    assert arrival_offsets(5, None, 1.0, rng) == [0.0] * 5


def test_level_plans_and_defaults() -> None:
    plans = plan_levels(BenchSettings())
    assert [(p.label, p.num_prompts) for p in plans] == [("c=1", 8), ("c=4", 16), ("c=16", 64)]
    plans = plan_levels(BenchSettings(rate=["2,inf"], max_concurrency=8))
    assert [(p.label, p.value, p.num_prompts, p.max_concurrency) for p in plans] == [
        ("rate=2/s", 2.0, 60, 8),
        ("rate=inf", None, 100, 8),
    ]
    assert plan_levels(BenchSettings(concurrency=["3"], duration=5))[0].num_prompts is None
