"""The pure metric definitions (vLLM's), checked on hand-made records."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from haloserve.bench.metrics import (
    distribution,
    is_good,
    level_metrics,
    parse_slo,
    peak_concurrency,
    percentile,
    tpot_s,
)
from haloserve.bench.schema import RequestRecord


def rec(
    i: int,
    start: float,
    ttft: float,
    itl: list[float],
    out: int | None = None,
    ok: bool = True,
    prompt: int = 10,
    kind: str | None = None,
) -> RequestRecord:
    e2el = ttft + sum(itl)
    return RequestRecord(
        index=i,
        id=f"r{i}",
        start_s=start,
        ok=ok,
        ttft_s=ttft if ok else None,
        e2el_s=e2el if ok else None,
        itl_s=itl if ok else [],
        output_tokens=(out if out is not None else len(itl) + 1) if ok else 0,
        prompt_tokens=prompt,
        output_tokens_source="usage",
        prompt_tokens_source="usage",
        error_kind=kind if not ok else None,
        status=500 if kind == "http" else None,
        error="boom" if not ok else None,
    )


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), st.floats(0, 100))
def test_percentile_matches_numpy(values: list[float], p: float) -> None:
    assert percentile(sorted(values), p) == pytest.approx(float(np.percentile(values, p)), rel=1e-9, abs=1e-6)


def test_distribution_in_ms_with_population_std() -> None:
    d = distribution([0.010, 0.020, 0.030, 0.040])
    assert (d.count, d.mean, d.median, d.min, d.max) == (
        4,
        pytest.approx(25.0),
        pytest.approx(25.0),
        10.0,
        40.0,
    )
    assert d.std == pytest.approx(float(np.std([10, 20, 30, 40])))
    assert d.p99 == pytest.approx(float(np.percentile([10, 20, 30, 40], 99)))
    assert distribution([]).count == 0 and distribution([]).mean == 0.0


def test_parse_slo_units_and_errors() -> None:
    assert parse_slo("ttft=500ms,tpot=50ms") == {"ttft": 500.0, "tpot": 50.0}
    assert parse_slo("e2el=2s, ttft=1500us") == {"e2el": 2000.0, "ttft": 1.5}
    assert parse_slo("ttft=300") == {"ttft": 300.0}
    assert parse_slo(None) == {} and parse_slo(" ") == {}
    for bad in ("ttft", "ttft=fast", "itl=5ms", "ttft=1ms,ttft=2ms", "ttft=5h"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_tpot_excludes_first_token_and_needs_two_tokens() -> None:
    r = rec(0, 0.0, 0.1, [0.02, 0.04])  # 3 tokens, e2el 0.16
    assert tpot_s(r) == pytest.approx((0.16 - 0.1) / 2)
    assert tpot_s(rec(1, 0.0, 0.1, [], out=1)) is None
    # usage says 5 tokens in 3 chunks: TPOT uses the token count, as vLLM does
    assert tpot_s(rec(2, 0.0, 0.1, [0.02, 0.04], out=5)) == pytest.approx(0.06 / 4)


def test_goodput_slo_is_inclusive_and_one_token_counts_tpot_zero() -> None:
    r = rec(0, 0.0, 0.5, [0.05, 0.05])
    assert is_good(r, {"ttft": 500.0, "tpot": 50.0})
    assert not is_good(r, {"ttft": 499.9})
    assert is_good(rec(1, 0.0, 0.1, [], out=1), {"tpot": 0.0})
    assert not is_good(rec(2, 0.0, 0.1, [], ok=False, kind="http"), {"ttft": 1e9})


def test_level_metrics_definitions() -> None:
    records = [
        rec(0, 0.0, 0.1, [0.01] * 9),  # 10 tokens
        rec(1, 0.5, 0.3, [0.02] * 4),  # 5 tokens
        rec(2, 1.0, 0.0, [], ok=False, kind="http"),
        rec(3, 1.0, 0.0, [], ok=False, kind="early_close"),
    ]
    m = level_metrics(records, duration_s=2.0, slo_ms={"ttft": 200.0})
    assert (m.completed, m.failed) == (2, 2)
    assert m.total_output_tokens == 15 and m.total_input_tokens == 20  # failed requests count nothing
    assert m.request_throughput == pytest.approx(1.0)
    assert m.output_throughput == pytest.approx(7.5)
    assert m.total_token_throughput == pytest.approx(17.5)
    assert m.good == 1 and m.request_goodput == pytest.approx(0.5)
    assert m.ttft_ms.mean == pytest.approx(200.0)
    assert m.itl_ms.count == 13 and m.itl_ms.max == pytest.approx(20.0)
    assert m.tpot_ms.count == 2
    assert m.e2el_ms.max == pytest.approx(380.0)
    assert m.errors == {"http": 1, "early_close": 1} and m.http_statuses == {"500": 1}
    assert m.output_tokens_source == "usage"
    assert level_metrics(records, 2.0).request_goodput is None


def test_peak_concurrency_half_open_intervals() -> None:
    a = rec(0, 0.0, 0.1, [0.1])  # [0, 0.2)
    b = rec(1, 0.2, 0.1, [0.1])  # starts exactly when a ends
    c = rec(2, 0.1, 0.1, [0.5])
    assert peak_concurrency([a, b]) == 1
    assert peak_concurrency([a, b, c]) == 2
