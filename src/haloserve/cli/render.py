"""Output helpers shared by subcommands: one JSON printer and one rich console per call."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that degrades to plain text when not a terminal."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout (for ``--json``)."""
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
