"""halo bench against the fake upstream: metrics equal the known timing, load modes, errors by kind."""

from __future__ import annotations

import pytest

from haloserve.bench.preflight import raise_fd_limit
from haloserve.testing.upstream import FakeUpstream
from haloserve.testing.upstream_cli import spawn
from haloserve.testing.upstream_config import UpstreamConfig
from tests.bench.conftest import bench


@pytest.mark.process
def test_metrics_equal_the_fake_servers_known_timing() -> None:
    ttft, itl, n = 40.0, 10.0, 20
    with spawn(UpstreamConfig(ttft_ms=ttft, itl_ms=itl)) as url:
        result = bench(url, concurrency=[1, 4], num_prompts=8, output_len=n, warmup=1)
    assert [lv.label for lv in result.levels] == ["c=1", "c=4"]
    for lv in result.levels:
        m = lv.metrics
        assert (m.completed, m.failed) == (8, 0)
        assert all(r.output_tokens == n and r.prompt_tokens == 16 for r in lv.requests)
        assert (m.total_output_tokens, m.total_input_tokens) == (8 * n, 8 * 16)
        assert (m.output_tokens_source, m.input_tokens_source) == ("usage", "usage")
        # generous bounds: a loaded CI machine is late, never early
        assert ttft - 1 <= m.ttft_ms.median <= ttft + 50
        assert itl - 1 <= m.tpot_ms.median <= itl + 3
        assert itl - 2 <= m.itl_ms.median <= itl + 3
        assert m.itl_ms.count == 8 * (n - 1)
        e2e = ttft + (n - 1) * itl
        assert e2e - 2 <= m.e2el_ms.median <= e2e + 70
        assert m.request_throughput == pytest.approx(8 / m.duration_s)
        assert m.output_throughput == pytest.approx(8 * n / m.duration_s)
        assert m.peak_concurrency == int(lv.value or 0)
    c1, c4 = (lv.metrics for lv in result.levels)
    assert c4.request_throughput > 2.5 * c1.request_throughput  # four streams at a time


@pytest.mark.slow
def test_rate_mode_spreads_arrivals_and_caps_concurrency(upstream: FakeUpstream) -> None:
    result = bench(upstream.url, rate=[20], num_prompts=20, seed=1)
    (lv,) = result.levels
    starts = sorted(r.start_s for r in lv.requests)
    assert lv.mode == "rate" and lv.value == 20 and lv.metrics.completed == 20
    assert 0.8 < starts[-1] < 1.3  # 20 arrivals at 20/s span about one second, rescaled as vLLM does
    upstream.configure(ttft_ms=50)
    upstream.reset()
    capped = bench(upstream.url, rate=["inf"], max_concurrency=3, num_prompts=9).levels[0]
    assert capped.metrics.completed == 9 and capped.metrics.peak_concurrency == 3
    assert upstream.stats.max_in_flight <= 3 + 1  # + the connection warm-up GETs


@pytest.mark.slow
def test_goodput_counts_requests_within_every_slo(upstream: FakeUpstream) -> None:
    upstream.configure(ttft_ms=30)
    strict = bench(upstream.url, concurrency=[2], num_prompts=6, slo="ttft=10ms").levels[0].metrics
    loose = bench(upstream.url, concurrency=[2], num_prompts=6, slo="ttft=5s,tpot=1s").levels[0].metrics
    assert strict.good == 0 and strict.request_goodput == 0
    assert loose.good == 6 and loose.request_goodput == pytest.approx(loose.request_throughput)


@pytest.mark.slow
def test_duration_mode_stops_issuing_after_the_duration(upstream: FakeUpstream) -> None:
    upstream.configure(itl_ms=10)
    lv = bench(upstream.url, concurrency=[2], duration=0.5).levels[0]
    assert 4 <= lv.metrics.completed <= 40
    # issued before the deadline; start_s is when it was written, a scheduling delay later on a busy box
    # (CI saw one just past 0.5 s), so the bound leaves room for that delay, not for another request
    assert all(r.start_s < 0.5 + 0.2 for r in lv.requests)


def test_multi_turn_sessions_resend_history(upstream: FakeUpstream) -> None:
    lv = bench(upstream.url, workload="multi-turn", turns=3, num_prompts=6, concurrency=[2]).levels[0]
    assert lv.metrics.completed == 6
    by_session: dict[int, list] = {}
    for r in lv.requests:
        by_session.setdefault(r.session, []).append(r)
    assert 2 <= len(by_session) <= 3  # the request budget may end a conversation early
    assert max(len(t) for t in by_session.values()) == 3
    for turns in by_session.values():
        assert [r.turn for r in turns] == list(range(len(turns)))
        # each turn adds 16 user words and, before it, the 8-word reply
        assert [r.prompt_tokens for r in turns] == [16 + k * (8 + 16) for k in range(len(turns))]


def test_errors_are_counted_by_kind_and_the_run_goes_on(upstream: FakeUpstream) -> None:
    upstream.configure(error_rate=0.2, error_status=503, drop_rate=0.1, cut_rate=0.1, broken_rate=0.1, seed=3)
    m = bench(upstream.url, concurrency=[4], num_prompts=80).levels[0].metrics
    injected = upstream.stats.injected
    assert m.completed + m.failed == 80 and m.completed > 20
    assert m.errors.get("http", 0) == injected["error"] and m.http_statuses == {"503": injected["error"]}
    # a drop on a kept-alive connection looks like the server closing it under the request: sent again
    assert m.errors.get("early_close", 0) + m.resent == injected["drop"] + injected["cut"]
    assert m.errors.get("broken_stream", 0) == injected["broken"]
    assert min(injected[k] for k in ("error", "drop", "cut", "broken")) > 0


@pytest.mark.process
def test_one_process_drives_500_concurrent_streams() -> None:
    raise_fd_limit()
    with spawn(UpstreamConfig(ttft_ms=1500, itl_ms=20)) as url:
        lv = bench(url, concurrency=[500], num_prompts=500, output_len=4).levels[0]
    assert (lv.metrics.completed, lv.metrics.failed) == (500, 0)
    assert lv.metrics.peak_concurrency == 500


@pytest.mark.slow
def test_connections_are_kept_alive_unless_told_otherwise(upstream: FakeUpstream) -> None:
    kept = bench(upstream.url, concurrency=[2], num_prompts=16).levels[0]
    opened = upstream.stats.connections
    assert kept.metrics.completed == 16
    assert opened <= 2 + 1  # the level's two workers (+ the preflight's, if it was not reused)
    upstream.reset()
    fresh = bench(upstream.url, concurrency=[2], num_prompts=16, keepalive=False).levels[0]
    assert fresh.metrics.completed == 16
    assert upstream.stats.connections >= 16  # one per request, as asked


@pytest.mark.slow
def test_the_cyclic_gc_is_off_while_a_level_runs_and_back_on_after(upstream: FakeUpstream) -> None:
    import gc

    from haloserve.bench.preflight import run_sync
    from haloserve.bench.runner import NullSink, Runner
    from haloserve.config.bench import BenchSettings

    seen: list[bool] = []

    class Sink(NullSink):
        def request_done(self, record: object) -> None:
            seen.append(gc.isenabled())

    settings = BenchSettings(url=upstream.url, concurrency=[2], num_prompts=6, output_len=4, progress=False)
    assert gc.isenabled()
    run_sync(Runner(settings, Sink()).run())
    assert seen == [False] * 6 and gc.isenabled() and gc.get_freeze_count() == 0

    class Failing(NullSink):
        def request_done(self, record: object) -> None:
            raise RuntimeError("sink failed")

    with pytest.raises(RuntimeError, match="sink failed"):
        run_sync(Runner(settings, Failing()).run())
    assert gc.isenabled() and gc.get_freeze_count() == 0  # a level that fails still restores the GC


@pytest.mark.slow
def test_a_server_closing_kept_alive_connections_costs_no_failures(upstream: FakeUpstream) -> None:
    upstream.configure(drop_reused=True)
    result = bench(upstream.url, concurrency=[2], num_prompts=12)
    m = result.levels[0].metrics
    assert (m.completed, m.failed) == (12, 0)
    # the first requests on reused connections were sent again, then each had a connection of its own
    assert 1 <= m.resent <= 2 + 2 and m.resent == upstream.stats.injected["reused"]  # no warm-up here
    assert any("closed kept-alive connections" in n for n in result.notes)
    upstream.reset()
    assert bench(upstream.url, concurrency=[2], num_prompts=6, keepalive=False).levels[0].metrics.resent == 0
    assert upstream.stats.injected["reused"] == 0
