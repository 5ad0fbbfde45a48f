"""``halo cluster``: start/join/stop boxes, deploy models over them, and watch the replicas (on Ray)."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

HELP = "Run several boxes as one serving cluster on Ray: start, join, deploy, status, scale, logs, stop."
INSTALL = "Ray is not installed: pip install 'haloserve[cluster]'"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        default=os.environ.get("HALO_CLUSTER_DIR") or str(Path.home() / ".local/state/haloserve/cluster"),
        help="where this box keeps the cluster's state and logs (env HALO_CLUSTER_DIR)",
    )


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=os.environ.get("HALO_CLUSTER_ADDRESS"),
        help="the head's Ray address HOST:PORT (default: the one this box's start/join recorded)",
    )


def _node_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=socket.gethostname().split(".")[0], help="this node's name")
    p.add_argument("--gpu-memory", help="usable GPU memory to register (e.g. 100GiB); default: measured")
    p.add_argument("--num-cpus", type=int, help="CPUs Ray may schedule here (default: all)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address this node's replicas listen on (the gateway must reach it)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands and their flags."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="Start the head: Ray, the controller and the gateway.")
    _node_flags(start)
    start.add_argument("--port", type=int, default=6379, help="Ray's port on the head (GCS)")
    start.add_argument("--ray-address", help="join this existing Ray cluster instead of starting a Ray head")
    start.add_argument("--gateway-host", default="127.0.0.1", help="address the gateway binds")
    start.add_argument("--gateway-port", type=int, default=8090, help="port the gateway listens on")
    start.add_argument("--no-gateway", action="store_true", help="do not run halo gateway here")
    join = sub.add_parser("join", help="Join this box to a head as a worker node.")
    join.add_argument("head", help="the head's Ray address HOST[:PORT] (port 6379 by default)")
    _node_flags(join)
    join.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the head to answer")
    stop = sub.add_parser("stop", help="Undo start/join on this box (replicas here, gateway, Ray).")
    deploy = sub.add_parser("deploy", help="Serve a model on the cluster (or every model of a spec file).")
    deploy.add_argument("model", nargs="?", help="GGUF file (the planner reads it; nodes load --node-path)")
    deploy.add_argument(
        "--serve-args",
        default="",
        metavar="'FLAGS'",
        help="more halo serve flags, one string, e.g. '--threads 4'",
    )
    deploy.add_argument("--file", help="a halo deploy spec (YAML) instead of MODEL")
    deploy.add_argument("--name", help="model id clients ask for (default: the file's stem)")
    deploy.add_argument("--replicas", type=int, default=1)
    deploy.add_argument(
        "--split", choices=["none", "rpc"], default="none", help="rpc: one model over --nodes boxes"
    )
    deploy.add_argument("--nodes", type=int, default=1, help="boxes one split replica spans")
    how = deploy.add_mutually_exclusive_group()
    how.add_argument("--spread", dest="strategy", action="store_const", const="spread", help="(default)")
    how.add_argument("--pack", dest="strategy", action="store_const", const="pack")
    deploy.add_argument("--on", action="append", default=[], metavar="NODE", help="allowed nodes (repeat)")
    deploy.add_argument("--node-path", help="the GGUF's path on the nodes, when it differs from MODEL")
    deploy.add_argument("--ctx-size", "-c", type=int, help="total context (default: the model's)")
    deploy.add_argument("--parallel", "-np", type=int, default=1)
    deploy.add_argument("--cache-type-k", default="f16")
    deploy.add_argument("--cache-type-v", default="f16")
    deploy.add_argument("--no-wait", action="store_true", help="return once placed, not once serving")
    deploy.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the replicas")
    status = sub.add_parser("status", help="Nodes, memory, deployments and replicas.")
    status.add_argument("--json", action="store_true")
    scale = sub.add_parser("scale", help="Set the number of replicas of a deployment.")
    scale.add_argument("name")
    scale.add_argument("replicas", type=int)
    remove = sub.add_parser("remove", help="Stop a deployment's replicas and forget it.")
    remove.add_argument("name")
    logs = sub.add_parser("logs", help="The last lines of each replica's halo serve log.")
    logs.add_argument("name")
    logs.add_argument("--lines", "-n", type=int, default=50)
    for p in (start, join, stop, deploy, status, scale, remove, logs):
        _common(p)
    for p in (deploy, status, scale, remove, logs):
        _address(p)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the action; without Ray, say how to get it."""
    import importlib.util

    try:  # found, not imported: join and stop never load Ray in this process (seconds on a busy box)
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        from haloserve.cli.render import console

        console(stderr=True).print(f"halo cluster: error: {INSTALL}", markup=False, highlight=False)
        return 2
    from haloserve.cli import cluster_actions

    return int(getattr(cluster_actions, args.action)(args))
