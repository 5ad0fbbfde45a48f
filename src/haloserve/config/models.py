"""The many-models options of ``halo serve`` (``--models-dir``, ``--models``, the memory budget), declared
once and used as field defaults in :class:`~haloserve.config.serve.ServeSettings` (docs/models.md)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator

from haloserve.config.base import option
from haloserve.units import parse_size


def _size_or_none(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return parse_size(value, default_unit="GiB")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


Size = Annotated[int | None, BeforeValidator(_size_or_none)]

MODELS_DIR = option(
    None,
    "Serve every GGUF in this directory, loaded on demand (split files as one model; id: the file name"
    " without .gguf and the split suffix). See docs/models.md.",
    env=("LLAMA_ARG_MODELS_DIR",),
    metavar="DIR",
)
MODELS_FILE = option(
    None,
    "YAML file listing the models to serve on demand, each with its id, path, aliases and own settings"
    " (ctx_size, parallel, cache types, n_gpu_layers, chat_template, ttl, pinned, preload).",
    metavar="FILE",
)
MEMORY_BUDGET = option(
    None,
    "Memory the loaded models may take together, e.g. 96G (bare numbers: GiB). Default: what halo doctor"
    " says the GPU can use, or the RAM on a host without an integrated GPU.",
    metavar="SIZE",
    ge=1,
)
MODELS_MAX = option(
    0,
    "Most models loaded at once, besides the memory budget (0: no limit).",
    env=("LLAMA_ARG_MODELS_MAX",),
    ge=0,
)
MODEL_TTL = option(
    0.0,
    "Seconds an idle model stays loaded before it is unloaded (0: until memory is needed); a model's own"
    " ttl in --models wins.",
    ge=0,
)
MODEL_LOAD_TIMEOUT = option(
    300.0,
    "Seconds a request waits for its model to load (and for busy models to finish to make room);"
    " then 503 with Retry-After, while the load goes on.",
    gt=0,
)
