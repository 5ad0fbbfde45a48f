"""The built-in model catalog (``catalog.yaml``, shipped in the package): names to cited configs.

Every entry holds the architecture keys of the model's official ``config.json`` and is turned into a
:class:`ModelSpec` by the same code that reads a local ``config.json``. Unknown names fail with the
closest catalog names (``difflib``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from haloserve.errors import ConfigError
from haloserve.planner.hf_source import spec_from_config
from haloserve.planner.spec import ModelSpec


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model: its cited config and the figures its model card states."""

    key: str
    name: str
    hf: str
    aliases: tuple[str, ...]
    config_url: str
    verified: str
    card: str
    card_params: dict[str, Any]
    native_ctx: int | None
    default_quant: str
    notes: tuple[str, ...]
    config: dict[str, Any]

    def spec(self) -> ModelSpec:
        """The :class:`ModelSpec` of this entry."""
        return spec_from_config(
            self.config,
            name=self.name,
            source=self.config_url,
            ctx_native=self.native_ctx,
            notes=self.notes,
        )


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, CatalogEntry]:
    """Every catalog entry by its key (read once from the package data file)."""
    text = resources.files("haloserve.planner").joinpath("catalog.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    entries = {}
    for key, item in raw.items():
        entries[key] = CatalogEntry(
            key=key,
            name=item["name"],
            hf=item["hf"],
            aliases=tuple(item.get("aliases") or ()),
            config_url=item["config_url"],
            verified=item["verified"],
            card=item["card"],
            card_params=dict(item.get("card_params") or {}),
            native_ctx=item.get("native_ctx"),
            default_quant=item["default_quant"],
            notes=tuple(item.get("notes") or ()),
            config=dict(item["config"]),
        )
    return entries


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for key, entry in load_catalog().items():
        for alias in (key, entry.name, entry.hf, *entry.aliases):
            index[_norm(alias)] = key
    return index


def lookup(name: str) -> CatalogEntry:
    """The catalog entry for ``name`` (key, model name, HF id or alias; case-insensitive).

    Raises :class:`ConfigError` naming the closest entries when nothing matches.
    """
    index = _index()
    key = index.get(_norm(name))
    if key is not None:
        return load_catalog()[key]
    close = difflib.get_close_matches(_norm(name), list(load_catalog()), n=3, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(_norm(name), list(index), n=3, cutoff=0.5)
        close = list(dict.fromkeys(index[c] for c in close))
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `halo plan --list` to see the catalog"
    raise ConfigError(f"unknown model {name!r} (not a file and not in the catalog){hint}")
