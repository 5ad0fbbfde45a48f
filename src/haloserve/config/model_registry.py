"""The models ``halo serve`` knows: every GGUF in ``--models-dir`` and every entry of ``--models`` (YAML).

Each becomes a :class:`ModelEntry` with its own :class:`ServeSettings` (the server's, overlaid with the
entry's per-model settings and validated by the same model, so a bad value is one start-up error naming
the model and the field). Files that cannot be a model (not ``.gguf``, partial downloads, split sets with
a part missing) are skipped with a logged reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from haloserve.config.serve import ServeSettings
from haloserve.errors import ConfigError

log = logging.getLogger("haloserve.models")

SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".download", ".crdownload", ".incomplete")

# Settings of the server as a whole: a model entry may not set them (the rest are per-model).
SERVER_WIDE = frozenset(
    {
        "model", "model_alias", "engine", "models_dir", "models", "memory_budget", "models_max",
        "model_ttl", "model_load_timeout", "host", "port", "api_key", "api_key_file", "cors_origin",
        "max_body_bytes", "max_header_bytes", "max_header_line_bytes", "header_timeout", "body_timeout",
        "keepalive_timeout", "max_connections", "shutdown_timeout", "metrics", "metrics_auth",
        "log_level", "log_prompts", "rpc",
    }
)  # fmt: skip
ENTRY_KEYS = frozenset({"id", "alias", "path", "aliases", "ttl", "pinned", "preload"})


@dataclass
class ModelEntry:
    """One model the server can load: its id, file, aliases, own settings and lifecycle rules."""

    id: str
    path: Path
    settings: ServeSettings
    aliases: tuple[str, ...] = ()
    ttl: float | None = None  # seconds idle before unloading; None: never
    pinned: bool = False
    preload: bool = False
    template_source: str | None = None
    notes: list[str] = field(default_factory=list)

    def names(self) -> tuple[str, ...]:
        """The id and the aliases."""
        return (self.id, *self.aliases)


def model_id_for(path: Path) -> str:
    """The id of a GGUF: the file name without ``.gguf`` and without a split suffix."""
    m = SPLIT.match(path.name)
    if m:
        return m.group("stem")
    name = path.name
    return name[:-5] if name.lower().endswith(".gguf") else name


def scan_models_dir(directory: Path) -> tuple[list[Path], list[str]]:
    """The first file of every complete GGUF model in ``directory`` (sorted), and why others were skipped."""
    if not directory.is_dir():
        raise ConfigError(f"--models-dir: {directory} is not a directory")
    found: list[Path] = []
    skipped: list[str] = []
    splits: dict[str, dict[int, Path]] = {}
    totals: dict[str, int] = {}
    for path in sorted(directory.iterdir()):
        name = path.name
        if name.startswith("."):
            continue
        if name.lower().endswith(PARTIAL_SUFFIXES):
            skipped.append(f"{name}: a partial download")
            continue
        if not name.lower().endswith(".gguf"):
            skipped.append(f"{name}: not a .gguf file")
            continue
        if not path.is_file():
            skipped.append(f"{name}: not a regular file")
            continue
        m = SPLIT.match(name)
        if m is None:
            found.append(path)
            continue
        stem = m.group("stem")
        splits.setdefault(stem, {})[int(m.group("part"))] = path
        totals[stem] = int(m.group("total"))
    for stem, parts in sorted(splits.items()):
        missing = [i for i in range(1, totals[stem] + 1) if i not in parts]
        if missing:
            skipped.append(f"{stem}: split model with part(s) {', '.join(map(str, missing))} missing")
        else:
            found.append(parts[1])
    return sorted(found, key=lambda p: p.name), skipped


def model_settings(base: ServeSettings, where: str, overrides: dict[str, Any]) -> ServeSettings:
    """``base`` overlaid with a model's own settings, validated as halo serve's (errors name ``where``)."""
    for key in overrides:
        if key in SERVER_WIDE:
            raise ConfigError(f"{where}: {key!r} is a server-wide setting, not a per-model one")
        if key not in ServeSettings.model_fields:
            raise ConfigError(f"{where}: unknown setting {key!r}")
    # Only what the server was given, so that "set explicitly" (e.g. -ngl's warning) stays true to it.
    values = {k: getattr(base, k) for k in base.model_fields_set}
    values.update(overrides)
    try:
        return ServeSettings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str((err.get("loc") or ("?",))[0])
        got = overrides.get(name)
        shown = "" if got is None else f" (got {got!r})"
        raise ConfigError(f"{where}: {name}: {err['msg']}{shown}") from None


def _entry_from_yaml(base: ServeSettings, file: Path, i: int, raw: Any) -> ModelEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: models[{i}] must be a mapping with at least 'path'")
    data = {str(k).replace("-", "_"): v for k, v in raw.items()}
    if "path" not in data or not isinstance(data["path"], str):
        raise ConfigError(f"{file}: models[{i}] needs a 'path' (the GGUF file)")
    path = Path(data["path"]).expanduser()
    if not path.is_absolute():
        path = file.parent / path
    ident = data.get("id", data.get("alias")) or model_id_for(path)
    where = f"{file}: model {ident!r}"
    if "id" in data and "alias" in data and data["id"] != data["alias"]:
        raise ConfigError(f"{where}: give 'id' or 'alias', not two different names")
    aliases = data.get("aliases") or []
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where}: aliases must be a list of names")
    ttl = data.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0):
        raise ConfigError(f"{where}: ttl must be a number of seconds >= 0 (got {ttl!r})")
    flags = {}
    for key in ("pinned", "preload"):
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false (got {value!r})")
        flags[key] = value
    overrides = {k: v for k, v in data.items() if k not in ENTRY_KEYS}
    if isinstance(overrides.get("chat_template"), str):
        tpl = Path(overrides["chat_template"]).expanduser()
        overrides["chat_template"] = tpl if tpl.is_absolute() else file.parent / tpl
    settings = model_settings(base, where, overrides)
    return ModelEntry(
        id=str(ident),
        path=path,
        settings=settings,
        aliases=tuple(aliases),
        ttl=float(ttl) if ttl else None,
        pinned=flags["pinned"],
        preload=flags["preload"],
    )


def read_models_file(base: ServeSettings, file: Path) -> list[ModelEntry]:
    """The entries of a ``--models`` YAML file: ``models: [{id, path, aliases, ttl, ...}, ...]``."""
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--models: file not found: {file}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--models: cannot read {file}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ConfigError(f"{file}: expected a mapping with a 'models' list")
    extra = set(data) - {"models"}
    if extra:
        raise ConfigError(f"{file}: unknown key(s) {', '.join(sorted(map(str, extra)))} (only 'models')")
    return [_entry_from_yaml(base, file, i, raw) for i, raw in enumerate(data["models"])]


def _read_template(entry: ModelEntry) -> None:
    from haloserve.engine.chat_template import ChatTemplate

    tpl = entry.settings.chat_template
    if tpl is None:
        return
    try:
        entry.template_source = tpl.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"model {entry.id!r}: chat_template: cannot read {tpl}: {exc.strerror}") from None
    ChatTemplate(entry.template_source)  # compile now: a broken template is a start-up error


def build_registry(settings: ServeSettings) -> list[ModelEntry]:
    """Every model of ``--models-dir``, ``--models`` and ``--model`` (a file entry wins over the directory's
    entry for the same file); ids and aliases must be unique."""
    entries: list[ModelEntry] = []
    if settings.models_dir is not None:
        paths, skipped = scan_models_dir(settings.models_dir.expanduser())
        for reason in skipped:
            log.warning("--models-dir: skipped %s", reason)
        ttl = settings.model_ttl or None
        entries += [ModelEntry(model_id_for(p), p, settings, ttl=ttl) for p in paths]
    if settings.models is not None:
        for entry in read_models_file(settings, settings.models.expanduser()):
            if entry.ttl is None and settings.model_ttl:
                entry.ttl = settings.model_ttl
            same = [e for e in entries if _same_file(e.path, entry.path)]
            entries = [e for e in entries if e not in same]
            entries.append(entry)
    if settings.model is not None:
        ident = settings.model_alias or model_id_for(settings.model)
        entries.append(ModelEntry(ident, settings.model, settings, ttl=settings.model_ttl or None))
    if not entries:
        raise ConfigError("no models found: --models-dir holds no complete .gguf file")
    _check_unique(entries)
    for entry in entries:
        _read_template(entry)
    return entries


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_unique(entries: Iterable[ModelEntry]) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        for name in entry.names():
            if name in seen:
                raise ConfigError(
                    f"model name {name!r} is used twice ({seen[name]} and {entry.path}); give one an id"
                )
            seen[name] = str(entry.path)
