"""``halo gateway``: one OpenAI API in front of many backends, with keys, quotas and usage."""

from __future__ import annotations

import argparse
from pathlib import Path

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config import load_settings
from haloserve.config.gateway import GatewaySettings

HELP = "Load-balance OpenAI-compatible backends with prefix-aware routing, keys, quotas and usage."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags generated from :class:`GatewaySettings`, plus ``--config``."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML file of settings, re-read on change and on SIGHUP (flags and env win).",
    )
    add_settings_arguments(parser, GatewaySettings)


def run(args: argparse.Namespace) -> int:
    """Load settings, then serve until SIGTERM (drained) or SIGINT."""
    from haloserve.cli.serve import setup_logging
    from haloserve.gateway.checks import check_settings
    from haloserve.gateway.run import run as run_gateway
    from haloserve.protocol.connlimits import ConnLimits, raise_nofile_limit

    flags = settings_flags(args, GatewaySettings)
    settings = load_settings(GatewaySettings, flags=flags, file=args.config)
    check_settings(settings)
    raise_nofile_limit()  # before the workers fork; the connection cap is sized from it
    ConnLimits.from_settings(settings, fds_per_connection=2)  # a cap the descriptors cannot hold: exit 2
    setup_logging(settings.log_level)
    return run_gateway(settings, config_path=args.config, flags=flags)
