"""Output helpers shared by subcommands: one JSON printer, one rich console per call, safe text."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from haloserve.printable import printable

# Characters JSON may carry raw but a terminal would act on (C1 controls such as CSI U+009B, line
# separators, bidi overrides) or that stdout cannot encode (lone surrogates); C0 is escaped by json.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that degrades to plain text when not a terminal."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def markup_safe(text: object) -> str:
    """``text`` from a file or a peer, ready to embed in rich markup: controls shown, brackets inert."""
    return escape(printable(text))


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout (for ``--json``); every control character escaped."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))
    sys.stdout.write("\n")
    sys.stdout.flush()
