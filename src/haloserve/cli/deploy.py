"""``halo deploy``: images, Compose files, a Swarm stack and multi-node launch files from one spec."""

from __future__ import annotations

import argparse
from pathlib import Path

from haloserve.cli.options import HaloArgumentParser

HELP = "Deploy: write a spec (init), render Dockerfiles/Compose/Swarm/launch files (render), check them."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``init``, ``render`` and ``check`` subcommands."""
    sub = parser.add_subparsers(dest="deploy_command", metavar="ACTION", parser_class=HaloArgumentParser)
    init = sub.add_parser(
        "init", help="write a commented example spec", description="Write a commented example spec."
    )
    init.add_argument("--nodes", type=int, default=1, help="number of nodes in the example (default: 1)")
    init.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: standard output)")
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    render = sub.add_parser(
        "render",
        help="check every placement with the planner, then write the files",
        description="Check every placement with the planner, then write the deployment's files.",
    )
    render.add_argument("spec", metavar="SPEC", help="the deploy spec (YAML)")
    render.add_argument("-o", "--output", metavar="DIR", required=True, help="directory to write into")
    render.add_argument("--force", action="store_true", help="write into a non-empty directory")
    render.add_argument("--json", action="store_true", help="print the files and the fit as JSON")
    check = sub.add_parser(
        "check", help="re-validate rendered files", description="Re-validate rendered files."
    )
    check.add_argument("dir", metavar="DIR", help="a directory written by `halo deploy render`")
    check.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the action."""
    from haloserve.errors import ConfigError

    actions = {"init": _init, "render": _render, "check": _check}
    action = actions.get(getattr(args, "deploy_command", None) or "")
    if action is None:
        raise ConfigError("choose an action: init, render or check (see `halo deploy --help`)")
    return action(args)


def _init(args: argparse.Namespace) -> int:
    import sys

    from haloserve.deploy.examples import example_spec
    from haloserve.errors import CommandError

    if args.output is None:
        sys.stdout.write(example_spec(args.nodes))
        return 0
    out = Path(args.output)
    if out.exists() and not args.force:
        raise CommandError(f"{out} exists (use --force to overwrite)")
    out.write_text(example_spec(args.nodes, out.name), encoding="utf-8")
    print(f"wrote {out}: edit it, then `halo deploy render {out} -o deploy/`")
    return 0


def _render(args: argparse.Namespace) -> int:
    from haloserve.cli.render import console, print_json
    from haloserve.deploy import check_fit, deployment_files, load_spec, write_files
    from haloserve.deploy.report import fit_table, fit_to_dict

    doc = load_spec(Path(args.spec))
    fit = check_fit(doc.spec, doc.where, doc.lines)
    files = deployment_files(doc.spec, fit, doc.text)
    out = Path(args.output)
    removed = write_files(files, out, force=args.force)
    if args.json:
        print_json({"output": str(out), "files": list(files), "removed": removed, **fit_to_dict(fit)})
        return 0
    con = console()
    con.print(fit_table(fit))
    for warning in fit.warnings:
        con.print(f"! {warning}", markup=False, soft_wrap=True)
    con.print(f"wrote {len(files)} files to {out}" + (f" (removed {len(removed)} stale)" if removed else ""))
    con.print(f"next: read {out / 'README.md'}", markup=False)
    return 0


def _check(args: argparse.Namespace) -> int:
    from haloserve.cli.render import console, print_json
    from haloserve.deploy.check import check_dir
    from haloserve.deploy.report import check_table
    from haloserve.errors import ConfigError

    root = Path(args.dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory")
    results = check_dir(root)
    if not results:
        raise ConfigError(f"{root}: no rendered files (Compose files, Dockerfiles, scripts) found")
    bad = [r for r in results if not r.ok]
    if args.json:
        print_json(
            [
                {
                    "path": r.path,
                    "kind": r.kind,
                    "ok": r.ok,
                    "problems": list(r.problems),
                    "skipped": list(r.skipped),
                }
                for r in results
            ]
        )
    else:
        console().print(check_table(results))
    return 1 if bad else 0
