"""``halo keys``: create, list and revoke the gateway's API keys."""

from __future__ import annotations

import argparse
import time

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config import load_settings
from haloserve.config.gateway import KeysSettings

HELP = "Create, list and revoke API keys of halo gateway (stored hashed in SQLite)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``create NAME [--rpm N] [--tpm N] [--models a,b]``, ``list``, ``revoke ID|NAME``."""
    add_settings_arguments(parser, KeysSettings)
    parser.add_argument("--json", action="store_true", help="JSON output.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="Make a key; its secret is printed once.")
    create.add_argument("name", help="A label for the key (who or what uses it).")
    create.add_argument("--rpm", type=int, default=0, help="Requests per minute (0: unlimited).")
    create.add_argument("--tpm", type=int, default=0, help="Tokens per minute (0: unlimited).")
    create.add_argument("--models", default="", help="Comma-separated models the key may use (default: all).")
    lst = sub.add_parser("list", help="Show keys (never their secrets).")
    lst.add_argument("--all", action="store_true", help="Include revoked keys.")
    revoke = sub.add_parser("revoke", help="Revoke a key by id or name (takes effect within a second).")
    revoke.add_argument("key", help="Key id (key_...) or name.")
    for p in (create, lst, revoke):  # the shared options also work after the action
        add_settings_arguments(p, KeysSettings)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output.")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def run(args: argparse.Namespace) -> int:
    """Do the action against the store."""
    from haloserve.cli.render import console, print_json
    from haloserve.errors import ConfigError
    from haloserve.gateway.store import Store

    settings = load_settings(KeysSettings, flags=settings_flags(args, KeysSettings))
    store = Store(settings.keys_db)
    if args.action == "create":
        if args.rpm < 0 or args.tpm < 0:
            raise ConfigError("--rpm and --tpm must be >= 0")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        made = store.create_key(args.name, rpm=args.rpm, tpm=args.tpm, models=models)
        if args.json:
            print_json({**made.record.as_dict(), "key": made.secret})
        else:
            print(made.secret)
            console(stderr=True).print(f"created {made.record.id} ({args.name}); the key is shown only once")
        return 0
    if args.action == "revoke":
        rec = store.revoke(args.key)
        if args.json:
            print_json(rec.as_dict())
        else:
            print(f"revoked {rec.id} ({rec.name})")
        return 0
    keys = store.list_keys(include_revoked=args.all)
    if args.json:
        print_json([k.as_dict() for k in keys])
        return 0
    from rich.table import Table

    table = Table("id", "name", "key", "created (UTC)", "rpm", "tpm", "models", "revoked")
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            k.hint,
            _when(k.created),
            str(k.rpm or "-"),
            str(k.tpm or "-"),
            ",".join(k.models) or "all",
            _when(k.revoked),
        )
    console().print(table)
    return 0
