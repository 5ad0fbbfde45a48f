"""``halo usage``: tokens and requests per key, model and day, recorded by halo gateway."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config import load_settings
from haloserve.config.gateway import KeysSettings

HELP = "Report halo gateway usage by key, model and day, as a table or JSON."
_GROUPS = ("day", "key", "model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Filters (--since, --until, --key, --model), grouping (--by) and --json."""
    add_settings_arguments(parser, KeysSettings)
    parser.add_argument("--since", metavar="YYYY-MM-DD", help="First day (UTC) to include.")
    parser.add_argument("--until", metavar="YYYY-MM-DD", help="Last day (UTC) to include.")
    parser.add_argument("--key", help="Only this key (id or name).")
    parser.add_argument("--model", help="Only this model.")
    parser.add_argument(
        "--by",
        default="day,key,model",
        help="Comma-separated grouping columns from day, key, model (default: all three).",
    )
    parser.add_argument("--json", action="store_true", help="JSON output.")


def group(rows: Iterable[dict[str, Any]], by: list[str]) -> list[dict[str, Any]]:
    """Sum usage rows over the columns not in ``by``."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        ident = tuple(r["key_name"] if g == "key" else r[g] for g in by)
        acc = out.get(ident)
        if acc is None:
            acc = out[ident] = {g: v for g, v in zip(by, ident, strict=True)}
            acc.update(requests=0, errors=0, prompt_tokens=0, completion_tokens=0, total_tokens=0)
        for f in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"):
            acc[f] += r[f]
    return [out[k] for k in sorted(out)]


def run(args: argparse.Namespace) -> int:
    """Read the store and render."""
    from haloserve.cli.render import console, print_json
    from haloserve.errors import ConfigError
    from haloserve.gateway.store import Store

    by = [g.strip() for g in args.by.split(",") if g.strip()]
    if not by or any(g not in _GROUPS for g in by):
        raise ConfigError(f"--by takes a comma list of {', '.join(_GROUPS)}")
    settings = load_settings(KeysSettings, flags=settings_flags(args, KeysSettings))
    rows = Store(settings.keys_db).usage(since=args.since, until=args.until, key=args.key, model=args.model)
    table_rows = group((r.as_dict() for r in rows), by)
    if args.json:
        print_json(table_rows)
        return 0
    from rich.table import Table

    table = Table(*by, "requests", "errors", "prompt tokens", "completion tokens", "total tokens")
    for r in table_rows:
        table.add_row(
            *(str(r[g]) for g in by),
            *(
                f"{r[f]:,}"
                for f in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
            ),
        )
    console().print(table)
    return 0
