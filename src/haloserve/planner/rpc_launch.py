"""The commands of a planned RPC split: ``halo rpc-worker`` on the workers, ``halo serve --rpc`` on the main.

The main node (the first address) loads the GGUF and runs ``halo serve``; every other node runs
``halo rpc-worker`` and receives its layers over the network (or from its tensor cache). The
``--tensor-split`` is the plan's (:func:`haloserve.planner.cluster.tensor_split_for`), in llama.cpp's
device order: the workers in ``--rpc`` order, then the main node. ``halo serve``'s other flags are the
plan's ``LLAMA_ARG_*`` settings spelled as the flags ``halo serve`` declares for them, so the plan's
export lines and this command say the same thing. Pure: nothing here touches the network.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from haloserve.errors import ConfigError
from haloserve.units import fmt_bytes


class PlanLike(Protocol):
    """The parts of a :class:`haloserve.planner.plan.Plan` the RPC commands are made from (a Protocol,
    because plan.py imports this module)."""

    @property
    def inputs(self) -> Any: ...
    @property
    def spec(self) -> Any: ...
    @property
    def weights(self) -> Any: ...
    @property
    def cluster(self) -> Any: ...
    @property
    def memory(self) -> Any: ...
    @property
    def budget(self) -> Any: ...
    @property
    def nodes_needed(self) -> int | None: ...
    @property
    def llama_env(self) -> Mapping[str, str]: ...

RPC_PORT = 50052  # ggml-rpc-server's and halo rpc-worker's default port
RPC_CACHE = "~/.cache/llama.cpp/rpc"  # ggml's own default, so rpc-server and halo rpc-worker share it
# llama-server settings halo serve has no option for because it does not need one
HALO_NEEDS_NO = {
    "LLAMA_ARG_FIT",
    "LLAMA_ARG_CACHE_RAM",
    "LLAMA_ARG_MODEL",
    "LLAMA_ARG_RPC",
    "LLAMA_ARG_TENSOR_SPLIT",
}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def check_address(value: str, worker: bool = False) -> str:
    """``value`` if it is an IP address or a host name (a worker's: an IPv4 address, which is what
    ``halo rpc-worker --host`` binds); else :class:`ConfigError` (one line)."""
    try:
        ip = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        ip = None
    if worker and not isinstance(ip, ipaddress.IPv4Address):
        raise ConfigError(
            f"--node-address {value!r}: a worker's address is the IPv4 address halo rpc-worker listens on"
        )
    if ip is not None:
        return str(ip)
    if not _HOSTNAME.match(value):
        raise ConfigError(f"--node-address {value!r} is not an IP address or a host name")
    return value


def node_addresses(nodes: int, given: Sequence[str] = ()) -> tuple[str, ...]:
    """The address of each node, main node first: ``given`` (checked) or placeholders ``node1..nodeN``
    (names to replace: ``halo rpc-worker`` binds IPv4 addresses)."""
    if given and len(given) != nodes:
        raise ConfigError(f"--node-address gives {len(given)} address(es) for {nodes} node(s)")
    if not given:
        return tuple(f"node{i}" for i in range(1, nodes + 1))
    return tuple(check_address(a, worker=i > 0) for i, a in enumerate(given))


def netloc(host: str) -> str:
    """``host`` as it goes before ``:port`` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def rpc_endpoints(nodes: int, given: Sequence[str] = (), port: int = RPC_PORT) -> list[str]:
    """``--rpc`` of the main node: every worker's ``host:port``, in device order."""
    return [f"{netloc(a)}:{port}" for a in node_addresses(nodes, given)[1:]]


def sh_join(argv: Sequence[str]) -> str:
    """``argv`` as one shell line; a leading ``~/`` stays unquoted so the shell expands it."""
    out = []
    for arg in argv:
        home = arg.startswith("~/") and shlex.quote(arg[2:]) == arg[2:]
        out.append(arg if home else shlex.quote(arg))
    return " ".join(out)


def serve_flags(env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """``halo serve`` flags for the ``LLAMA_ARG_*`` settings in ``env``, and those it has no option for."""
    from haloserve.config.base import flag_name, is_bool_field
    from haloserve.config.serve import ServeSettings

    by_env = {e: n for n in ServeSettings.model_fields for e in ServeSettings.env_names(n)}
    flags: list[str] = []
    missing: list[str] = []
    for var, value in env.items():
        name = by_env.get(var)
        if name is None:
            if var not in HALO_NEEDS_NO:
                missing.append(var)
            continue
        if var in HALO_NEEDS_NO:
            continue
        flag = flag_name(name)
        if is_bool_field(ServeSettings.model_fields[name]):
            on = value.strip().lower() in ("1", "true", "on", "yes")
            flags.append(flag if on else "--no-" + flag[2:])
        else:
            flags += [flag, value]
    return flags, missing


@dataclass(frozen=True)
class RpcCommand:
    """One command of the split: what runs on which node."""

    node: str
    role: str  # "worker" or "main"
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command as one line to paste."""
        return sh_join(self.argv)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"node": self.node, "role": self.role, "argv": list(self.argv), "command": self.command}


@dataclass(frozen=True)
class RpcLaunch:
    """How to start the split, or why there is none (``split_needed`` false: one node holds it)."""

    split_needed: bool
    fits: bool
    note: str
    tensor_split: str | None
    commands: tuple[RpcCommand, ...]
    unsupported: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "split_needed": self.split_needed,
            "fits": self.fits,
            "note": self.note,
            "tensor_split": self.tensor_split,
            "commands": [c.to_dict() for c in self.commands],
            "halo_serve_has_no_option_for": list(self.unsupported),
        }


def model_file(plan: PlanLike) -> str:
    """The GGUF the main node loads: the planned file, else a name to replace (``<model>-<quant>.gguf``)."""
    ref = plan.inputs.model_ref
    if ref and ref.endswith(".gguf"):
        return ref
    return f"{plan.spec.name}-{plan.weights.quant}.gguf".replace(" ", "-")


def rpc_launch(plan: PlanLike, port: int = RPC_PORT, cache: str | None = RPC_CACHE) -> RpcLaunch | None:
    """The RPC commands of ``plan`` (``None`` for a one-node plan)."""
    n = plan.inputs.nodes
    cluster = plan.cluster
    if n == 1 or cluster is None:
        return None
    if plan.nodes_needed == 1:
        need, usable = fmt_bytes(plan.memory.total_bytes), fmt_bytes(plan.budget.usable_bytes)
        note = (
            f"fits on one node ({need} of {usable}): no RPC split; serve it with halo serve on each node "
            "and put halo gateway in front"
        )
        return RpcLaunch(False, True, note, None, ())
    if not cluster.rpc_fits:
        more = f"; it needs {plan.nodes_needed} nodes" if plan.nodes_needed else ""
        return RpcLaunch(True, False, f"the RPC split over {n} nodes does not fit{more}", None, ())
    addresses = node_addresses(n, plan.inputs.node_addresses)
    workers = []
    for addr in addresses[1:]:
        argv = ["halo", "rpc-worker", "--host", addr, "--port", str(port)]
        workers.append(RpcCommand(addr, "worker", (*argv, *(["--cache", cache] if cache else []))))
    flags, missing = serve_flags(plan.llama_env)
    main = (
        "halo",
        "serve",
        "--model",
        model_file(plan),
        "--rpc",
        ",".join(rpc_endpoints(n, plan.inputs.node_addresses, port)),
        "--tensor-split",
        cluster.tensor_split,
        *flags,
    )
    workers_word = "the worker" if n == 2 else f"the {n - 1} workers"
    note = (
        f"start {workers_word} first, then halo serve on {addresses[0]}; only {addresses[0]} needs the GGUF. "
        "RPC has no authentication: use private addresses on a link only these nodes share"
    )
    return RpcLaunch(
        True,
        True,
        note,
        cluster.tensor_split,
        (*workers, RpcCommand(addresses[0], "main", main)),
        tuple(missing),
    )
