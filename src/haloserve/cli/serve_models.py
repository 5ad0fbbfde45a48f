"""``halo serve --models-dir DIR`` / ``--models FILE``: the registry, the memory budget and the manager,
checked before anything binds (docs/models.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from haloserve.config.model_registry import ModelEntry, build_registry
from haloserve.config.serve import ServeSettings
from haloserve.errors import ConfigError
from haloserve.units import fmt_bytes


def engine_factory(settings: ServeSettings) -> Callable[[ModelEntry], Any]:
    """How one model's engine is made (its own thread and backend; loaded by the manager)."""
    if settings.engine == "fake":
        from haloserve.engine.fake import FakeEngine

        return lambda entry: FakeEngine(entry.settings, str(entry.path))
    from haloserve.engine.llama_engine import LlamaEngine

    return lambda entry: LlamaEngine(entry.settings, entry.path)


def build_models_app(settings: ServeSettings, warn: Callable[[str], None]) -> Any:
    """The app of a many-models server; a bad entry or a budget no model fits is a start-up error."""
    from haloserve.config.serve_env import check_build, check_settings
    from haloserve.server.app import create_models_app
    from haloserve.server.model_memory import budget_after_overhead, planned_bytes
    from haloserve.server.models import ModelManager

    entries = build_registry(settings)
    gpus: list[str] = []
    if settings.engine == "llama":
        from haloserve.engine.devices import gpu_devices, list_devices, supports_mlock
        from haloserve.engine.llamacpp import init_backend

        init_backend()
        gpus = [d.name for d in gpu_devices(list_devices())]
        lines: set[str] = set()
        for entry in entries:
            check_settings(entry.settings)
            lines.update(check_build(entry.settings, gpus, supports_mlock()))
        for line in sorted(lines):
            warn(line)
    if settings.memory_budget is not None:
        budget, source = settings.memory_budget, "--memory-budget"
    else:
        from haloserve.doctor.budget import live_serving_budget

        budget, source = live_serving_budget()  # halo doctor's figure for this host
    budget = budget_after_overhead(budget, bool(gpus))
    manager = ModelManager(
        entries,
        budget=budget,
        make_engine=engine_factory(settings),
        need_bytes=lambda e: planned_bytes(e.path, e.settings),
        max_models=settings.models_max,
        load_timeout=settings.model_load_timeout,
        stop_timeout=settings.shutdown_timeout,
    )
    for line in manager.measure():
        warn(line)
    check_budget(manager, budget)

    def on_ready(state: Any) -> None:
        banner(manager, settings, source)

    return create_models_app(settings, manager, on_ready=on_ready)


def check_budget(manager: Any, budget: int) -> None:
    """Refuse a budget smaller than every model, or one the pinned models alone overflow."""
    sized = [m for m in manager.models.values() if m.need_bytes is not None]
    if sized and not any(m.need_bytes <= budget for m in sized):
        smallest = min(sized, key=lambda m: m.need_bytes)
        raise ConfigError(
            f"--memory-budget {fmt_bytes(budget)} is smaller than any model: the smallest,"
            f" {smallest.id!r}, needs {fmt_bytes(smallest.need_bytes)} (weights + KV cache + compute, as"
            " halo plan counts them); raise the budget or lower ctx_size/parallel"
        )
    pinned = [m for m in sized if m.entry.pinned]
    total = sum(m.need_bytes for m in pinned)
    if total > budget:
        raise ConfigError(
            f"the pinned models ({', '.join(m.id for m in pinned)}) need {fmt_bytes(total)} together,"
            f" more than the memory budget {fmt_bytes(budget)}"
        )


def banner(manager: Any, settings: ServeSettings, source: str) -> None:
    """The start-up lines: each model with its planned bytes, the budget and the URL."""
    lines = [
        f"halo serve: {len(manager.models)} model(s), loaded on demand within {fmt_bytes(manager.budget)}"
        f" ({source}){f'; at most {settings.models_max} at once' if settings.models_max else ''}"
    ]
    for m in manager.models.values():
        flags = [f for f, on in (("pinned", m.entry.pinned), ("preload", m.entry.preload)) if on]
        size = fmt_bytes(m.need_bytes) if m.need_bytes is not None else f"failed: {m.error}"
        aliases = f" (aliases {', '.join(m.entry.aliases)})" if m.entry.aliases else ""
        lines.append(f"  {m.id}{aliases}: {size}{' ' + ' '.join(flags) if flags else ''}")
    lines.append(f"  listening on http://{settings.host}:{settings.port}/v1")
    print("\n".join(lines), file=sys.stderr, flush=True)
