"""The ``halo`` command: one module per subcommand, registered here by name.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Heavy imports stay inside ``run`` so that ``halo doctor`` never loads llama.cpp.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from haloserve import __version__
from haloserve.cli.options import HaloArgumentParser, UsageError
from haloserve.errors import ConfigError, HaloError
from haloserve.printable import printable

# Subcommands by name -> module. Order is the order shown in ``halo --help``.
COMMANDS: dict[str, str] = {
    "serve": "haloserve.cli.serve",
    "plan": "haloserve.cli.plan",
    "doctor": "haloserve.cli.doctor",
    "bench": "haloserve.cli.bench",
    "gateway": "haloserve.cli.gateway",
    "keys": "haloserve.cli.keys",
    "usage": "haloserve.cli.usage",
    "deploy": "haloserve.cli.deploy",
    "rpc-worker": "haloserve.cli.rpc_worker",
}


def build_parser() -> HaloArgumentParser:
    """The full ``halo`` parser with every registered subcommand."""
    parser = HaloArgumentParser(
        prog="halo",
        description="Serve LLMs through an OpenAI-compatible API on AMD Strix Halo machines.",
    )
    parser.add_argument("--version", action="version", version=f"halo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=HaloArgumentParser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``halo``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "halo"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "_run", None) is None:
            parser.print_help(sys.stderr)
            return 2
        prog = f"halo {args.command}"
        return int(args._run(args) or 0)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ConfigError as exc:  # messages may quote files and peers: controls are shown escaped
        print(f"{prog}: error: {printable(exc.message, multiline=True)}", file=sys.stderr)
        return 2
    except HaloError as exc:
        print(f"{prog}: error: {printable(exc.message, multiline=True)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, no traceback
        if os.environ.get("HALO_DEBUG"):
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {printable(exc)} "
            "(set HALO_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
