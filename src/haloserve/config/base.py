"""Settings declared once: typed fields whose flags, environment variables and docs derive from them.

Each option is a pydantic field made with :func:`option`. The CLI turns fields into flags
(``cli/options.py``); :func:`load_settings` merges, from lowest to highest precedence, the field
defaults, a config file, environment variables (``HALO_<NAME>`` and any aliases such as llama-server's
``LLAMA_ARG_*``) and command-line flags. Nothing below the CLI ever sees an argparse namespace.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from haloserve.errors import ConfigError

S = TypeVar("S", bound="HaloSettings")

_MISSING: Any = ...


def option(
    default: Any = _MISSING,
    description: str = "",
    *,
    env: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    metavar: str | None = None,
    flag: bool = True,
    secret: bool = False,
    default_factory: Any = None,
    **kwargs: Any,
) -> Any:
    """A settings field: its description is the flag's help, ``env`` lists extra variable names.

    ``aliases`` are extra flag spellings (``-c``, ``--ctx-size``); ``flag=False`` keeps an option out
    of the command line (config file and environment only); ``secret`` hides the value in dumps.
    """
    extra: dict[str, Any] = {
        "env": list(env),
        "aliases": list(aliases),
        "metavar": metavar,
        "flag": flag,
        "secret": secret,
    }
    if default_factory is not None:
        return Field(
            default_factory=default_factory,
            description=description,
            json_schema_extra=typing.cast(JsonDict, extra),
            **kwargs,
        )
    return Field(default, description=description, json_schema_extra=typing.cast(JsonDict, extra), **kwargs)


def field_extra(field: FieldInfo) -> dict[str, Any]:
    """The option metadata stored on a field by :func:`option` (empty for plain fields)."""
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def flag_name(name: str) -> str:
    """The long flag for a field name: ``ctx_size`` -> ``--ctx-size``."""
    return "--" + name.replace("_", "-")


def is_list_field(field: FieldInfo) -> bool:
    """True when the field holds a list (repeatable flag, comma-separated in the environment)."""
    ann = field.annotation
    origins = {typing.get_origin(ann)}
    for arg in typing.get_args(ann):
        origins.add(typing.get_origin(arg))
    return list in origins or ann is list


def is_bool_field(field: FieldInfo) -> bool:
    """True when the field is a plain boolean switch."""
    ann = field.annotation
    return ann is bool or (
        typing.get_origin(ann) is not None and set(typing.get_args(ann)) == {bool, type(None)}
    )


class HaloSettings(BaseModel):
    """Base for every command's settings: strict about unknown keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    env_prefix: ClassVar[str] = "HALO_"

    @classmethod
    def env_names(cls, name: str) -> list[str]:
        """Environment variables that set ``name``, highest precedence first."""
        extra = field_extra(cls.model_fields[name])
        return [cls.env_prefix + name.upper(), *extra.get("env", [])]

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked, for logs and ``--json`` output."""
        out = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            if field_extra(field).get("secret") and out.get(name):
                value = out[name]
                out[name] = ["***"] * len(value) if isinstance(value, list) else "***"
        return out


def _coerce_env(field: FieldInfo, raw: str) -> Any:
    if is_list_field(field):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(
    cls: type[S],
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> S:
    """Merge defaults < config file < environment < flags into a validated settings object.

    Raises :class:`ConfigError` naming the flag, variable or file key that holds a bad value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file is not None:
        for key, value in _read_file(file).items():
            if key not in cls.model_fields:
                raise ConfigError(f"{file}: unknown option {key!r}")
            values[key] = value
            sources[key] = f"{file}: {key}"
    for name, field in cls.model_fields.items():
        for var in cls.env_names(name):
            raw = env.get(var)
            if raw is not None and raw != "":
                values[name] = _coerce_env(field, raw)
                sources[name] = var
                break
    for name, value in (flags or {}).items():
        values[name] = value
        sources[name] = flag_name(name)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc") or ("?",)
        name = str(loc[0])
        where = sources.get(name, flag_name(name))
        got = values.get(name)
        shown = (
            ""
            if got is None or field_extra(cls.model_fields.get(name, FieldInfo())).get("secret")
            else f" (got {got!r})"
        )
        raise ConfigError(f"{where}: {err['msg']}{shown}") from None
