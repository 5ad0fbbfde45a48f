"""Serving metrics from raw request records, defined exactly as vLLM's ``vllm bench serve`` does.

For each successful request (``vllm/benchmarks/serve.py``, ``calculate_metrics``):

- **TTFT**: send to the first token chunk.
- **E2EL**: send to the last token chunk.
- **TPOT** (excluding the first token): ``(E2EL - TTFT) / (output_tokens - 1)``, only for requests
  with more than one output token; for goodput a one-token request counts as TPOT 0.
- **ITL**: every gap between successive token chunks, pooled over all requests.
- **Throughput**: completed requests, output tokens, and input plus output tokens, each divided by
  the level's duration (first send to last completion). Failed requests count zero tokens.
- **Goodput**: completed requests meeting every SLO given (``ttft``, ``tpot``, ``e2el``; a value
  equal to the SLO passes), per second.

Percentiles interpolate linearly between order statistics (numpy's default), std is the population
standard deviation (``np.std``). An empty sample reports zeros, as vLLM does.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from haloserve.bench.schema import Distribution, LevelMetrics, RequestRecord, TokenSource

SLO_METRICS = ("ttft", "tpot", "e2el")
_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "": 1.0}
_SLO_RE = re.compile(r"^\s*([a-z0-9_]+)\s*[=:]\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ms|s|us)?\s*$")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of already sorted values, interpolating linearly (numpy's default)."""
    if not sorted_values:
        return 0.0
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    rank = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = rank - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def distribution(values_s: Iterable[float]) -> Distribution:
    """Summarise values given in seconds as a :class:`Distribution` in milliseconds."""
    ms = sorted(v * 1000.0 for v in values_s)
    if not ms:
        return Distribution()
    n = len(ms)
    mean = math.fsum(ms) / n
    var = math.fsum((v - mean) ** 2 for v in ms) / n
    return Distribution(
        count=n,
        mean=mean,
        std=math.sqrt(var),
        min=ms[0],
        median=percentile(ms, 50),
        p90=percentile(ms, 90),
        p99=percentile(ms, 99),
        max=ms[-1],
    )


def parse_slo(text: str | None) -> dict[str, float]:
    """Parse ``"ttft=500ms,tpot=50ms"`` into milliseconds per metric; raises ``ValueError`` if bad.

    Units: ``ms`` (default), ``s``, ``us``. Metrics: ``ttft``, ``tpot``, ``e2el``.
    """
    out: dict[str, float] = {}
    if not text or not text.strip():
        return out
    for part in text.split(","):
        m = _SLO_RE.match(part.lower())
        if not m:
            raise ValueError(f"bad SLO {part.strip()!r}: expected METRIC=VALUE[ms|s], e.g. ttft=500ms")
        name, value, unit = m.group(1), float(m.group(2)), m.group(3) or ""
        if name not in SLO_METRICS:
            raise ValueError(f"unknown SLO metric {name!r}: use {', '.join(SLO_METRICS)}")
        if name in out:
            raise ValueError(f"SLO metric {name!r} given twice")
        out[name] = value * _UNITS[unit]
    return out


def tpot_s(rec: RequestRecord) -> float | None:
    """TPOT of one successful request in seconds, or None when it has at most one output token."""
    if not rec.ok or rec.ttft_s is None or rec.e2el_s is None or rec.output_tokens <= 1:
        return None
    return (rec.e2el_s - rec.ttft_s) / (rec.output_tokens - 1)


def is_good(rec: RequestRecord, slo_ms: dict[str, float]) -> bool:
    """True when a successful request meets every SLO (vLLM: ``slo >= value``)."""
    if not rec.ok:
        return False
    values = {"ttft": rec.ttft_s or 0.0, "tpot": tpot_s(rec) or 0.0, "e2el": rec.e2el_s or 0.0}
    return all(limit / 1000.0 >= values[name] for name, limit in slo_ms.items())


def peak_concurrency(records: Iterable[RequestRecord]) -> int:
    """Most requests in flight at once over half-open intervals ``[start, start + e2el)``."""
    events: list[tuple[float, int]] = []
    for rec in records:
        if rec.ok and rec.e2el_s is not None:
            events.append((rec.start_s, 1))
            events.append((rec.start_s + rec.e2el_s, -1))
    events.sort()
    now = peak = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def _source(values: set[str]) -> TokenSource:
    if not values:
        return "none"
    if len(values) > 1:
        return "mixed"
    only = next(iter(values))
    return "usage" if only == "usage" else ("chunks" if only == "chunks" else "estimate")


def level_metrics(
    records: Sequence[RequestRecord], duration_s: float, slo_ms: dict[str, float] | None = None
) -> LevelMetrics:
    """All metrics of one level from its raw records and measured duration."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    dur = duration_s if duration_s > 0 else float("nan")
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    itls = [gap for r in ok for gap in r.itl_s]
    tpots = [t for r in ok if (t := tpot_s(r)) is not None]
    good = sum(1 for r in ok if is_good(r, slo_ms)) if slo_ms else None
    kinds: Counter[str] = Counter(r.error_kind or "other" for r in failed)
    statuses = Counter(str(r.status) for r in failed if r.error_kind == "http" and r.status is not None)
    first_error = None
    if failed:
        top_kind = kinds.most_common(1)[0][0]
        sample = next(r for r in failed if (r.error_kind or "other") == top_kind)
        first_error = sample.error
    return LevelMetrics(
        completed=len(ok),
        failed=len(failed),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=_rate(len(ok), dur),
        output_throughput=_rate(total_out, dur),
        total_token_throughput=_rate(total_in + total_out, dur),
        request_goodput=_rate(good, dur) if good is not None else None,
        good=good,
        ttft_ms=distribution(r.ttft_s for r in ok if r.ttft_s is not None),
        tpot_ms=distribution(tpots),
        itl_ms=distribution(itls),
        e2el_ms=distribution(r.e2el_s for r in ok if r.e2el_s is not None),
        client_overhead_ms=distribution(r.client_overhead_s for r in records),
        errors=dict(kinds),
        http_statuses=dict(statuses),
        first_error=first_error,
        input_tokens_source=_source({r.prompt_tokens_source for r in ok}),
        output_tokens_source=_source({r.output_tokens_source for r in ok}),
        peak_concurrency=peak_concurrency(records),
        resent=sum(1 for r in records if r.resent),
    )


def _rate(count: float, duration_s: float) -> float:
    value = count / duration_s
    return 0.0 if math.isnan(value) else value
