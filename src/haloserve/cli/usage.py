"""``halo usage``: tokens and requests per key, model and day, recorded by halo gateway."""

from __future__ import annotations

import argparse

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config import load_settings
from haloserve.config.gateway import KeysSettings

HELP = "Report halo gateway usage by key, model and day, as a table or JSON."


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


def run(args: argparse.Namespace) -> int:
    """Read the store and render."""
    from haloserve.cli.render import console, print_json
    from haloserve.gateway.store import Store, group_usage, parse_groups

    by = parse_groups(args.by, "--by")
    settings = load_settings(KeysSettings, flags=settings_flags(args, KeysSettings))
    rows = Store(settings.keys_db).usage(since=args.since, until=args.until, key=args.key, model=args.model)
    table_rows = group_usage(rows, by)
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
