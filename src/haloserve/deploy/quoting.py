"""Quoting for the languages ``halo deploy render`` writes: the Jinja filters the templates use.

No value reaches a rendered file as pasted text: YAML values go through a serializer (JSON, which is
YAML's flow subset, with the characters YAML 1.1 reads differently escaped), Compose values also double
``$`` (Compose interpolates), shell words and Dockerfile ``ARG``/``ENV`` values go through
:func:`shlex.quote` (BuildKit's lexer reads POSIX quoting), comments lose their line breaks.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

# Characters PyYAML (YAML 1.1) treats as line breaks or refuses as non-printable, but JSON leaves raw
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def yaml_value(value: Any) -> str:
    """``value`` (str, number, bool, None, list, dict) as one line of YAML flow syntax."""
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _dollars(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list | tuple):
        return [_dollars(v) for v in value]
    if isinstance(value, dict):
        return {k: _dollars(v) for k, v in value.items()}
    return value


def compose_value(value: Any) -> str:
    """A literal value in a Compose file: ``$`` doubled so Compose does not interpolate it, then YAML."""
    return yaml_value(_dollars(value))


def shell_word(value: Any) -> str:
    """One shell word (also one Dockerfile ``ARG``/``ENV`` value): quoted unless it is plain."""
    return shlex.quote(str(value))


def comment(value: Any) -> str:
    """Text for a ``#`` comment: line breaks and control characters become spaces."""
    return _BREAKS.sub(" ", str(value))


FILTERS = {"j": yaml_value, "compose": compose_value, "sh": shell_word, "df": shell_word, "comment": comment}
