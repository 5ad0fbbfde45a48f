"""Resolve what the user named into a spec and weights: a GGUF file, a ``config.json`` (or the directory
holding it), or a catalog name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from haloserve.errors import ConfigError
from haloserve.planner.catalog import lookup
from haloserve.planner.gguf_header import MAGIC as GGUF_MAGIC
from haloserve.planner.gguf_source import read_gguf, split_paths
from haloserve.planner.hf_source import load_hf
from haloserve.planner.spec import ModelSpec, Weights
from haloserve.planner.weights import estimate_weights

DEFAULT_HF_QUANT = "Q4_K_M"


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to plan: what it is, its weights, how it was found and what to call it."""

    spec: ModelSpec
    weights: Weights
    kind: str  # "gguf" | "config" | "catalog"
    ref: str  # path, or Hugging Face id, for the generated settings
    notes: tuple[str, ...] = ()


def _looks_like_path(text: str) -> bool:
    return text.endswith((".gguf", ".json")) or text.startswith(("/", "./", "../", "~"))


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def resolve_model(name: str, quant: str | None = None) -> ResolvedModel:
    """Find ``name`` as a file or directory first, then in the catalog (see the module docstring)."""
    if not name or not name.strip():
        raise ConfigError("no model given: pass a GGUF file, a config.json or a catalog name")
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return _from_config(path, quant)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (it holds {', '.join(ggufs[:3])}: pass the file)" if ggufs else ""
        raise ConfigError(f"{path}: a directory without config.json{hint}")
    if path.is_file():
        if path.suffix == ".json":
            return _from_config(path, quant)
        if path.suffix != ".gguf" and not _is_gguf(path):
            raise ConfigError(f"{path}: not a GGUF file (no GGUF magic) and not a config.json")
        spec, weights = read_gguf(path)
        notes = (f"--quant {quant} ignored: a GGUF file's quantisation is fixed",) if quant else ()
        first = split_paths(path)[0]  # llama.cpp opens a split model from its first part
        return ResolvedModel(spec, weights, "gguf", str(first.resolve()), notes)
    if _looks_like_path(name):
        raise ConfigError(f"{name}: no such file")
    entry = lookup(name)
    spec = entry.spec()
    return ResolvedModel(spec, estimate_weights(spec, quant or entry.default_quant), "catalog", entry.hf)


def _from_config(path: Path, quant: str | None) -> ResolvedModel:
    spec = load_hf(path)
    ref = str(path if path.is_dir() else path.parent)
    return ResolvedModel(spec, estimate_weights(spec, quant or DEFAULT_HF_QUANT), "config", ref)
