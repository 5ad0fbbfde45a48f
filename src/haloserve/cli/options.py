"""Command-line flags generated from settings fields, and the one-line error parser."""

from __future__ import annotations

import argparse
import sys
import typing
from enum import Enum
from typing import Any, NoReturn

from haloserve.config.base import (
    HaloSettings,
    field_extra,
    flag_name,
    is_bool_field,
    is_list_field,
)


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


class HaloArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr and exit code 2, never a usage dump."""

    def error(self, message: str) -> NoReturn:
        """Report a usage error in one line."""
        raise UsageError(f"{self.prog}: error: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """Exit after --help or --version without a traceback."""
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


def _choices(ann: Any) -> list[str] | None:
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Literal:
        return [str(a) for a in args]
    if isinstance(ann, type) and issubclass(ann, Enum):
        return [str(m.value) for m in ann]
    for arg in args:
        found = _choices(arg)
        if found:
            return found
    return None


def _help(cls: type[HaloSettings], name: str) -> str:
    field = cls.model_fields[name]
    text = field.description or ""
    default = field.get_default(call_default_factory=True)
    if default not in (None, [], "") and not field_extra(field).get("secret"):
        shown = default.value if isinstance(default, Enum) else default
        text += f" (default: {shown})"
    env = ", ".join(cls.env_names(name))
    return f"{text} [env: {env}]".replace("%", "%%")


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[HaloSettings]) -> None:
    """Add one flag per settings field; absent flags stay absent so env and files can apply."""
    for name, field in cls.model_fields.items():
        extra = field_extra(field)
        if not extra.get("flag", True):
            continue
        names = [flag_name(name), *extra.get("aliases", [])]
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": _help(cls, name),
        }
        if is_bool_field(field):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if is_list_field(field):
                kwargs["action"] = "append"
            choices = _choices(field.annotation)
            if choices:
                kwargs["choices"] = choices
            kwargs["metavar"] = extra.get("metavar") or name.split("_")[-1].upper()
        parser.add_argument(*names, **kwargs)


def settings_flags(ns: argparse.Namespace, cls: type[HaloSettings]) -> dict[str, Any]:
    """The flags the user actually gave, keyed by field name."""
    return {name: getattr(ns, name) for name in cls.model_fields if hasattr(ns, name)}
