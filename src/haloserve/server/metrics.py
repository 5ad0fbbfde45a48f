"""Prometheus metrics of one server, in a registry owned by its app (two apps never share state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from haloserve.engine.base import EngineInfo, EngineStats, Output
from haloserve.engine.bridge import StreamCancelled
from haloserve.errors import HaloError

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600)


class _EngineCollector(Collector):
    """Reads the engine's counters and gauges at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats], info: Callable[[], EngineInfo | None]) -> None:
        self._stats = stats
        self._info = info

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        st = self._stats()
        info = self._info()
        yield GaugeMetricFamily("halo_queue_depth", "Requests waiting for a free slot.", value=st.queue_depth)
        yield GaugeMetricFamily("halo_slots_busy", "Slots serving a request.", value=st.busy_slots)
        if info is not None:
            yield GaugeMetricFamily("halo_slots_total", "Slots (parallel sequences).", value=info.n_parallel)
            yield GaugeMetricFamily("halo_ctx_per_slot", "Context tokens per slot.", value=info.n_ctx_slot)
            yield GaugeMetricFamily(
                "halo_kv_cache_capacity_tokens", "Tokens the KV cache can hold (all slots).", value=info.n_ctx
            )
        yield GaugeMetricFamily(
            "halo_kv_cache_tokens", "Tokens the slots' KV caches hold now.", value=st.kv_tokens
        )
        counters = [
            ("halo_engine_steps", "Decode steps (llama_decode calls).", st.steps),
            (
                "halo_engine_multi_sequence_steps",
                "Decode steps that advanced more than one generating sequence.",
                st.decode_steps_multi,
            ),
            (
                "halo_prompt_tokens_processed",
                "Prompt tokens computed (not served from cache).",
                st.prompt_tokens_processed,
            ),
            (
                "halo_prefix_cache_hit_tokens",
                "Prompt tokens reused from a slot's KV cache.",
                st.prompt_tokens_cached,
            ),
            ("halo_engine_generated_tokens", "Tokens sampled by the engine.", st.generated_tokens),
            ("halo_engine_requests_failed", "Requests failed inside the engine.", st.requests_failed),
            (
                "halo_grammar_mask_seconds",
                "Time spent computing grammar token masks (overlaps llama_decode).",
                st.grammar_mask_seconds,
            ),
            (
                "halo_grammar_wait_seconds",
                "Time the engine waited for grammar token masks after llama_decode.",
                st.grammar_wait_seconds,
            ),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        if st.engine_cpu_seconds:
            cpu = CounterMetricFamily(
                "halo_engine_cpu_seconds",
                "Engine-thread CPU time by phase of a step (schedule, decode, tokens: sampling, detokenising"
                " and stops, handoff: waking the event loops).",
                labels=["phase"],
            )
            for phase, seconds in st.engine_cpu_seconds.items():
                cpu.add_metric([phase], seconds)
            yield cpu
        yield GaugeMetricFamily(
            "halo_engine_max_sequences_per_step",
            "Most sequences seen in one decode step.",
            value=st.max_seqs_in_step,
        )


class ServerMetrics:
    """The HTTP-side metrics plus the engine collector, in one registry."""

    def __init__(self, stats: Callable[[], EngineStats], info: Callable[[], EngineInfo | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "halo_requests",
            "Finished HTTP requests by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("halo_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter(
            "halo_generation_tokens", "Generated tokens of finished requests.", registry=r
        )
        self.ttft = Histogram(
            "halo_time_to_first_token_seconds",
            "Time from arrival to the first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "halo_time_per_output_token_seconds",
            "Time between consecutive output tokens.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "halo_request_duration_seconds",
            "Time from arrival to the last token.",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        # Per model (many models, docs/models.md); the manager's collector adds loads and memory.
        self.model_requests = Counter(
            "halo_model_requests", "Finished requests by model and status.", ["model", "status"], registry=r
        )
        self.model_tokens = Counter(
            "halo_model_tokens",
            "Tokens of finished requests by model and kind.",
            ["model", "kind"],
            registry=r,
        )
        r.register(_EngineCollector(stats, info))

    def request_done(self, endpoint: str, status: int, model: str | None = None) -> None:
        """Count one finished request (by model too when ``model`` is given)."""
        self.requests.labels(endpoint, str(status)).inc()
        if model is not None:
            self.model_requests.labels(model, str(status)).inc()

    def record(self, endpoint: str, start: float, model: str | None = None) -> RequestRecord:
        """The metrics of one generation request that arrived at ``start`` (``time.monotonic()``)."""
        return RequestRecord(self, endpoint, start, model)


class RequestRecord:
    """One request's metrics, counted exactly once: ``with record:`` around the request's work.

    :meth:`saw` times each output, :meth:`ok` counts a success with its tokens. Leaving the block without
    :meth:`ok` counts the failure: a :class:`HaloError`'s status, 499 when the client went away (or the
    task was cancelled), 500 for anything else. A streamed response hands the record over
    (:meth:`hand_over`) to the generator that writes the stream, which enters it again."""

    __slots__ = (
        "_handed_over",
        "done",
        "endpoint",
        "first",
        "last",
        "last_tokens",
        "metrics",
        "model",
        "start",
    )

    def __init__(self, metrics: ServerMetrics, endpoint: str, start: float, model: str | None = None) -> None:
        self.metrics = metrics
        self.model = model
        self.endpoint = endpoint
        self.start = start
        self.first = 0.0
        self.last = start
        self.last_tokens = 0
        self.done = False
        self._handed_over = False

    def saw(self, out: Output) -> None:
        """Time one output: the first gives the time to first token, later ones the time per token."""
        now = time.monotonic()
        m = self.metrics
        if not self.first:
            self.first = now
            m.ttft.observe(now - self.start)
        elif out.completion_tokens > self.last_tokens:
            m.itl.observe((now - self.last) / (out.completion_tokens - self.last_tokens))
        self.last, self.last_tokens = now, out.completion_tokens

    def ok(self, final: Output) -> None:
        """Count a success: status 200, its tokens and its duration."""
        if self.done:
            return
        self.done = True
        m = self.metrics
        m.request_done(self.endpoint, 200, self.model)
        m.prompt_tokens.inc(final.prompt_tokens)
        m.generation_tokens.inc(final.completion_tokens)
        if self.model is not None:
            m.model_tokens.labels(self.model, "prompt").inc(final.prompt_tokens)
            m.model_tokens.labels(self.model, "generation").inc(final.completion_tokens)
        m.e2e.observe(time.monotonic() - self.start)

    def failed(self, status: int) -> None:
        """Count a failure with ``status`` (only the first outcome of a request counts)."""
        if not self.done:
            self.done = True
            self.metrics.request_done(self.endpoint, status, self.model)

    def hand_over(self) -> RequestRecord:
        """Leave the counting to the next ``with`` block (the stream's), unless this one fails."""
        self._handed_over = True
        return self

    def __enter__(self) -> RequestRecord:
        self._handed_over = False
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None and self._handed_over:
            return
        if isinstance(exc, HaloError):
            self.failed(exc.status)
        elif exc is None or not isinstance(exc, Exception) or isinstance(exc, StreamCancelled):
            self.failed(499)  # the client went away, or the server is stopping
        else:
            self.failed(500)
