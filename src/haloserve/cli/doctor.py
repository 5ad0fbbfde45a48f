"""``halo doctor``: check a Strix Halo host (or a captured tree) and print exact fixes."""

from __future__ import annotations

import argparse
from pathlib import Path

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config.doctor import DoctorSettings

HELP = "Check this Strix Halo host (GPU, memory, TTM, IOMMU, ROCm, RDMA) and print exact fixes."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags from :class:`DoctorSettings`, plus output and snapshot switches."""
    add_settings_arguments(parser, DoctorSettings)
    parser.add_argument("--json", action="store_true", help="Print the results as a JSON list of checks.")
    parser.add_argument(
        "--snapshot",
        metavar="OUT.tar.gz",
        help="Also save exactly the files doctor read (no secrets, no personal files) for a bug report; "
        "`halo doctor --root OUT.tar.gz` replays it anywhere.",
    )
    parser.add_argument("--list", action="store_true", help="List the check ids and exit.")


def run(args: argparse.Namespace) -> int:
    """Run the checks, render them, and return 0 (nothing failed), 1 (a check failed)."""
    from haloserve.cli.render import console, print_json
    from haloserve.config import load_settings
    from haloserve.doctor import REGISTRY, diagnose, exit_code, facts_for, open_root, options_for
    from haloserve.doctor.registry import select
    from haloserve.doctor.report import render_list, render_report
    from haloserve.doctor.snapshot import Recorder, write_snapshot

    settings = load_settings(DoctorSettings, flags=settings_flags(args, DoctorSettings))
    if args.list:
        console().print(render_list(REGISTRY.values()))
        return 0
    select(settings.check)  # unknown ids fail before any work
    root = open_root(settings.root)
    options = options_for(root, settings.models_dir, settings.user)
    facts = facts_for(root)
    recorder = Recorder(root) if args.snapshot else None
    results = diagnose(recorder or root, facts, options, settings.check)
    snapshot = None
    if recorder is not None:
        snapshot = write_snapshot(recorder, facts, Path(args.snapshot), options.models_dir)
    if args.json:
        print_json([r.to_dict() for r in results])
        if snapshot is not None:
            console(stderr=True).print(f"snapshot written to {snapshot.path}", soft_wrap=True, markup=False)
    else:
        render_report(
            console(), results, root_label="live host" if root.live else root.label, snapshot=snapshot
        )
    return exit_code(results)
