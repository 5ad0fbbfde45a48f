"""Prometheus metrics of one gateway worker, in a registry owned by its app."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from haloserve.gateway.backends import CLOSED, HALF_OPEN, OPEN
from haloserve.gateway.pool import Pool

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STATE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class _PoolCollector(Collector):
    """Backend gauges read from the pool at scrape time."""

    def __init__(self, pool: Callable[[], Pool]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        pool = self._pool()
        in_flight = GaugeMetricFamily(
            "halo_gateway_backend_in_flight", "Requests in flight.", labels=["backend"]
        )
        limit = GaugeMetricFamily(
            "halo_gateway_backend_limit", "Concurrency limit (0: none).", labels=["backend"]
        )
        healthy = GaugeMetricFamily("halo_gateway_backend_healthy", "1 when healthy.", labels=["backend"])
        state = GaugeMetricFamily(
            "halo_gateway_backend_circuit", "Circuit: 0 closed, 1 half-open, 2 open.", labels=["backend"]
        )
        ejections = CounterMetricFamily(
            "halo_gateway_backend_ejections", "Times the circuit opened.", labels=["backend"]
        )
        for b in pool.backends:
            in_flight.add_metric([b.url], b.in_flight)
            limit.add_metric([b.url], b.limit)
            healthy.add_metric([b.url], 1 if b.healthy else 0)
            state.add_metric([b.url], _STATE[b.state])
            ejections.add_metric([b.url], b.ejections)
        yield from (in_flight, limit, healthy, state, ejections)
        depth = GaugeMetricFamily(
            "halo_gateway_queue_depth", "Requests waiting, per model.", labels=["model"]
        )
        for model, queue in pool.queues.items():
            depth.add_metric([model], len(queue))
        yield depth
        yield CounterMetricFamily(
            "halo_gateway_prefix_lookups",
            "Routing decisions by the prefix policy.",
            value=pool.prefix_lookups,
        )
        yield CounterMetricFamily(
            "halo_gateway_prefix_hits",
            "Decisions where a cached prefix chose the backend.",
            value=pool.prefix_hits,
        )
        ratio = pool.prefix_hits / pool.prefix_lookups if pool.prefix_lookups else 0.0
        yield GaugeMetricFamily("halo_gateway_prefix_hit_ratio", "prefix_hits / prefix_lookups.", value=ratio)


class GatewayMetrics:
    """Request counters and histograms plus the pool collector."""

    def __init__(self, pool: Callable[[], Pool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "halo_gateway_requests",
            "Finished requests by backend and status.",
            ["backend", "status"],
            registry=r,
        )
        self.errors = Counter(
            "halo_gateway_backend_errors", "Failed attempts on a backend.", ["backend"], registry=r
        )
        self.retries = Counter("halo_gateway_retries", "Attempts retried on another backend.", registry=r)
        self.latency = Histogram(
            "halo_gateway_request_duration_seconds",
            "Arrival to last byte, per backend.",
            ["backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "halo_gateway_time_to_first_byte_seconds",
            "Arrival to the first streamed byte, per backend.",
            ["backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait = Histogram(
            "halo_gateway_queue_wait_seconds",
            "Time spent waiting for a backend.",
            buckets=_LATENCY,
            registry=r,
        )
        r.register(_PoolCollector(pool))
