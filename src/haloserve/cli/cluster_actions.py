"""The actions of ``halo cluster`` (imported only when Ray is installed)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from haloserve.cli.render import console, print_json
from haloserve.cluster import client
from haloserve.cluster.memory import detect_memory
from haloserve.cluster.node import (
    NodeOptions,
    check_reachable,
    launch_gateway,
    node_record,
    save_record,
    start_ray,
    stop_local,
)
from haloserve.cluster.procs import pid_alive
from haloserve.cluster.spec import Deployment, check_name, from_deploy_spec
from haloserve.errors import ConfigError, HaloError
from haloserve.units import MiB, fmt_bytes, parse_size


def _say(text: str) -> None:
    print(f"halo cluster: {text}", flush=True)


def _options(args: argparse.Namespace, address: str | None) -> NodeOptions:
    state = Path(args.state_dir).expanduser().resolve()
    old = node_record(state) or {}
    if any(isinstance(p, int) and pid_alive(p) for p in old.get("ray_pids", [])):
        raise ConfigError(f"this box is already in a cluster ({state}/node.json): `halo cluster stop` first")
    check_name(args.name)
    override = parse_size(args.gpu_memory) if args.gpu_memory else None
    memory = detect_memory(override)
    if memory.mib < 1:
        raise ConfigError(f"node {args.name} has no usable memory ({memory.source})")
    opts = NodeOptions(name=args.name, state_dir=state, memory=memory, num_cpus=args.num_cpus, host=args.host)
    opts.address = address
    return opts


def start(args: argparse.Namespace) -> int:
    """Ray head (or join --ray-address), controller, gateway."""
    previous = node_record(Path(args.state_dir).expanduser().resolve()) or {}
    opts = _options(args, args.ray_address)
    opts.ray_port, opts.gateway_host, opts.gateway_port = args.port, args.gateway_host, args.gateway_port
    if args.ray_address:
        opts.address = check_reachable(args.ray_address)
    pids = start_ray(opts)
    address = opts.address or f"127.0.0.1:{opts.ray_port}"
    record: dict[str, Any] = {"role": "head", "name": opts.name, "address": address, "ray_pids": pids}
    save_record(opts.state_dir, record)
    where = (
        f"joined the Ray cluster at {address}"
        if opts.address
        else f"started a Ray head on port {opts.ray_port}"
    )
    _say(f"{where} as node {opts.name}: {fmt_bytes(opts.memory.usable_bytes)} usable ({opts.memory.source})")
    try:
        client.connect(address)
        client.create_controller(opts.name, opts.state_dir)
    except HaloError:
        stop_local(opts.state_dir)
        raise
    _say("controller running (Ray actor halo-controller, namespace haloserve)")
    kept = previous.get("gateway_pid")
    if isinstance(kept, int) and pid_alive(kept):  # Ray was lost, the gateway kept serving: keep it
        record["gateway_pid"], record["gateway_url"] = kept, previous.get("gateway_url")
        save_record(opts.state_dir, record)
        _say(f"gateway {record['gateway_url']}/v1 kept running (pid {kept})")
    elif not args.no_gateway:
        record["gateway_pid"] = launch_gateway(opts, opts.state_dir / "backends.json")
        record["gateway_url"] = f"http://{opts.gateway_host}:{opts.gateway_port}"
        save_record(opts.state_dir, record)
        _say(f"gateway {record['gateway_url']}/v1 (backends from {opts.state_dir / 'backends.json'})")
    _say(f"other boxes: halo cluster join <this box's address>:{opts.ray_port} --host <their address>")
    _say("undo: halo cluster stop")
    return 0


def join(args: argparse.Namespace) -> int:
    """Worker side: check the head answers, then ``ray start --address``."""
    address = check_reachable(args.head, timeout=args.timeout)
    opts = _options(args, address)
    pids = start_ray(opts)
    save_record(opts.state_dir, {"role": "worker", "name": opts.name, "address": address, "ray_pids": pids})
    _say(
        f"joined {address} as node {opts.name}: {fmt_bytes(opts.memory.usable_bytes)} usable "
        f"({opts.memory.source})"
    )
    _say("undo: halo cluster stop")
    return 0


def stop(args: argparse.Namespace) -> int:
    """Undo start/join here; on the head, stop the replicas and the controller first."""
    state = Path(args.state_dir).expanduser().resolve()
    record = node_record(state)
    if not record:
        _say(f"nothing to stop: no cluster was started from {state}")
        return 0
    if record.get("role") == "head":
        try:
            check_reachable(str(record["address"]), timeout=3)  # Ray's own connect waits a minute
            client.connect(str(record["address"]))
            if client.kill_controller():
                _say("stopped the controller and its replicas (deployments stay saved for the next start)")
        except HaloError as exc:
            _say(f"could not reach the controller ({exc.message}); stopping what runs here")
    for line in stop_local(state):
        _say(line)
    _say("this box has left the cluster; `halo cluster start` or `join` to come back")
    return 0


def _serve_args(text: str) -> list[str]:
    """``--serve-args`` split as a shell would; planning flags belong to deploy's own options."""
    import shlex

    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"--serve-args: {exc}") from None
    planned = {"--ctx-size", "-c", "--parallel", "-np", "--cache-type-k", "--cache-type-v", "--model", "-m",
               "--host", "--port", "--alias", "-a", "--rpc"}  # fmt: skip
    for word in words:
        if word.split("=", 1)[0] in planned:
            raise ConfigError(
                f"--serve-args: {word.split('=', 1)[0]} is set by halo cluster deploy (use its own flag)"
            )
    return words


def _deployments(args: argparse.Namespace) -> list[Deployment]:
    if args.file:
        if args.model:
            raise ConfigError("give MODEL or --file, not both")
        return from_deploy_spec(args.file)
    if not args.model:
        raise ConfigError("no model given: pass a GGUF file or --file spec.yaml")
    name = check_name(args.name or Path(args.model).stem)
    if args.split == "rpc" and args.nodes < 2:
        raise ConfigError("--split rpc needs --nodes 2 or more")
    if args.split == "none" and args.nodes != 1:
        raise ConfigError("--nodes needs --split rpc")
    if args.replicas < 1:
        raise ConfigError("--replicas must be at least 1 (halo cluster remove stops a deployment)")
    return [
        Deployment(
            name=name,
            source=args.model,
            path=args.node_path or str(Path(args.model).expanduser().resolve()),
            replicas=args.replicas,
            split=args.split,
            nodes=args.nodes,
            strategy=args.strategy or "spread",
            candidates=args.on,
            ctx=args.ctx_size,
            parallel=args.parallel,
            cache_type_k=args.cache_type_k,
            cache_type_v=args.cache_type_v,
            serve_args=_serve_args(args.serve_args),
        )
    ]


def deploy(args: argparse.Namespace) -> int:
    """Plan each deployment, hand it to the controller, wait for its replicas."""
    from haloserve.cluster.need import plan_need

    deps = [plan_need(d) for d in _deployments(args)]
    client.connect(resolve_address(args))
    ctl = client.controller()
    for dep in deps:
        client.call(ctl.deploy, dep.model_dump())
        need = " + ".join(f"{m} MiB" for m in dep.need_mib)
        _say(f"deployed {dep.name}: {dep.replicas} replica(s) of {need} ({dep.plan_summary})")
    if args.no_wait:
        return 0
    code = 0
    for dep in deps:
        status = wait_ready(dep.name, args.timeout)
        code |= _report_replicas(status, dep.name)
    _say("undo: halo cluster remove " + " / ".join(d.name for d in deps))
    return code


def _report_replicas(status: dict[str, Any], name: str) -> int:
    dep = next((d for d in status["deployments"] if d["name"] == name), None)
    bad = 0
    for r in dep["replica_list"] if dep else []:
        line = f"{r['id']} on {r.get('node')}: {r.get('state')} {r.get('url') or ''}".rstrip()
        if r.get("error"):
            line += f" ({r['error']})"
        _say(line)
        bad |= r.get("state") != "ready"
    return 1 if bad else 0


def status(args: argparse.Namespace) -> int:
    """Nodes and replicas, table or JSON."""
    client.connect(resolve_address(args))
    data = client.call(client.controller().status)
    if args.json:
        print_json(data)
        return 0
    from rich.table import Table

    nodes = Table(title="nodes")
    for col in ("node", "total", "used", "free"):
        nodes.add_column(col, justify="left" if col == "node" else "right")
    for n in data["nodes"]:
        nodes.add_row(n["name"], *(fmt_bytes(n[k] * MiB) for k in ("total_mib", "used_mib", "free_mib")))
    reps = Table(title="replicas")
    for col in ("deployment", "replica", "node", "url", "state", "restarts", "load", "error"):
        reps.add_column(col)
    for d in data["deployments"]:
        for r in d["replica_list"]:
            load = "-" if r.get("load") is None else f"{r['load']:g}"
            reps.add_row(
                d["name"], r["id"], ",".join(r.get("nodes", [])), r.get("url") or "-", str(r.get("state")),
                str(r.get("restarts", 0)), load, r.get("error") or "",
            )  # fmt: skip
    out = console()
    out.print(nodes)
    out.print(reps)
    return 0


def scale(args: argparse.Namespace) -> int:
    """Set the replica count."""
    if args.replicas < 0:
        raise ConfigError("the replica count cannot be negative")
    client.connect(resolve_address(args))
    client.call(client.controller().scale, args.name, args.replicas)
    _say(f"{args.name} now has {args.replicas} replica(s) (undo: halo cluster scale {args.name} <previous>)")
    return 0


def remove(args: argparse.Namespace) -> int:
    """Stop a deployment."""
    client.connect(resolve_address(args))
    client.call(client.controller().remove, args.name)
    _say(f"removed {args.name} (its replicas are stopped; deploy it again to undo)")
    return 0


def logs(args: argparse.Namespace) -> int:
    """Each replica's log tail."""
    client.connect(resolve_address(args))
    data = client.call(client.controller().logs, args.name, args.lines)
    for entry in data["logs"]:
        sys.stdout.write(f"==> {entry['replica']} <==\n{entry['log']}")
    return 0


def resolve_address(args: argparse.Namespace) -> str:
    """--address, else what this box's start/join recorded."""
    if args.address:
        return str(args.address)
    rec: dict[str, Any] = node_record(Path(args.state_dir)) or {}
    if rec.get("address"):
        return str(rec["address"])
    raise ConfigError(
        f"no cluster recorded in {args.state_dir}: run `halo cluster start` here, or give --address HEAD:PORT"
    )


def wait_ready(name: str, timeout: float) -> dict[str, Any]:
    """Poll the controller until every replica of ``name`` is ready, one failed, or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while True:
        status = client.call(client.controller().status)
        dep = next((d for d in status["deployments"] if d["name"] == name), None)
        reps = dep["replica_list"] if dep else []
        if reps and all(r.get("state") in ("ready", "failed") for r in reps):
            return status
        if time.monotonic() > end:
            return status
        time.sleep(0.5)
