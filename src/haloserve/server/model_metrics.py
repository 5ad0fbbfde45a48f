"""Per-model metrics of ``halo serve`` with many models: state, memory, loads and unloads by ``model``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from haloserve.server.models import ModelManager


class ModelCollector(Collector):
    """Per-model state, memory, loads and unloads, read from the manager at scrape time."""

    def __init__(self, models: ModelManager) -> None:
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        mgr = self.models
        loaded = GaugeMetricFamily("halo_model_loaded", "1 when the model is loaded.", labels=["model"])
        memory = GaugeMetricFamily(
            "halo_model_memory_bytes",
            "Planned bytes of the model while loaded (0 otherwise).",
            labels=["model"],
        )
        loads = CounterMetricFamily("halo_model_loads", "Successful loads.", labels=["model"])
        unloads = CounterMetricFamily(
            "halo_model_unloads", "Unloads (eviction, ttl, request).", labels=["model"]
        )
        failures = CounterMetricFamily("halo_model_load_failures", "Failed loads.", labels=["model"])
        seconds = CounterMetricFamily("halo_model_load_seconds", "Time spent loading.", labels=["model"])
        for m in mgr.models.values():
            loaded.add_metric([m.id], 1.0 if m.status == "loaded" else 0.0)
            memory.add_metric([m.id], float(m.need_bytes or 0) if m.reserved else 0.0)
            loads.add_metric([m.id], m.loads)
            unloads.add_metric([m.id], m.unloads)
            failures.add_metric([m.id], m.load_failures)
            seconds.add_metric([m.id], m.load_seconds)
        yield from (loaded, memory, loads, unloads, failures, seconds)
        yield GaugeMetricFamily("halo_models_budget_bytes", "Memory budget of the models.", value=mgr.budget)
        yield GaugeMetricFamily(
            "halo_models_used_bytes", "Planned bytes of the loaded models.", value=mgr.used_bytes()
        )
