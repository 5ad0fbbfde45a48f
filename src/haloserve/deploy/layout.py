"""Where every service of a spec runs: per-node Compose services, the Swarm stack, gateway backends and
the launch scripts of split models. Pure data for the templates (see :mod:`haloserve.deploy.render`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from haloserve.deploy import services as svc
from haloserve.deploy.fit import FitReport, NodeMemory, Placement
from haloserve.deploy.gateway_config import Backend, gateway_config
from haloserve.deploy.spec import DeploySpec, Model, Node
from haloserve.units import MiB, fmt_bytes

HOST_ONLY = "the same server as its compose service, for a host without Docker"


@dataclass
class Script:
    """A plain shell script for one node (also run by the matching container)."""

    name: str
    template: str
    context: dict[str, object]
    about: str = "launch script, also run by the compose service"


@dataclass
class NodePlan:
    """Everything rendered for one node."""

    node: Node
    memory: NodeMemory
    services: list[svc.Service] = field(default_factory=list)
    dotenv: list[tuple[str, str, str]] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    gateway: dict[str, object] | None = None
    swarm_engines: int = 0


@dataclass
class Layout:
    """The whole deployment, node by node, plus the Swarm stack."""

    spec: DeploySpec
    fit: FitReport
    nodes: list[NodePlan]
    stack: list[svc.Service]
    stack_gateway: dict[str, object] | None
    warnings: list[str]


def _prefix(model: Model, shared: bool) -> str:
    return "".join(c if c.isalnum() else "_" for c in model.name.upper()) + "_" if shared else ""


def _rpc_addresses(spec: DeploySpec, model: Model) -> list[str]:
    return [f"{svc.netloc(svc.rpc_bind(spec.node(name)))}:{model.rpc_port}" for name in model.nodes[1:]]


def _backend(model: Model, host: str) -> Backend:
    return Backend(f"http://{svc.netloc(host)}:{model.port}", model.weight, model.parallel, (model.name,))


def _tp_context(spec: DeploySpec, p: Placement, node: Node) -> dict[str, object]:
    head = spec.node(p.model.nodes[0])
    assert head.rdma is not None and node.rdma is not None
    return {
        "model": p.model,
        "node": node,
        "head": head,
        "size": len(p.model.nodes),
        "vllm_args": svc.vllm_command(p),
        "env": svc.gpu_env(spec, llama=False),
    }


def _rpc_context(spec: DeploySpec, p: Placement, node: Node, main: bool) -> dict[str, object]:
    env = svc.gpu_env(spec)
    rpc = _rpc_addresses(spec, p.model)
    if main:
        env = svc.llama_env(spec, p, None, rpc)
        path = f"{node.models_dir.rstrip('/')}/{p.model.file}"
        env = [svc.EnvVar(e.name, path, "") if e.name == "LLAMA_ARG_MODEL" else e for e in env]
    halo = p.model.engine == "halo"
    return {
        "model": p.model,
        "node": node,
        "bind": svc.rpc_bind(node),
        "env": env,
        "halo": halo,
        "serve_flags": [*svc.halo_rpc_flags(p, rpc), *svc.sampling_flags(p.model), *p.model.extra_args]
        if halo
        else [],
        "worker_command": svc.halo_rpc_worker_command(p, node) if halo and not main else [],
        "cache_dir": svc.RPC_CACHE_DIR,
    }


def build_layout(spec: DeploySpec, fit: FitReport) -> Layout:
    """Place every service of ``spec`` (already fit-checked into ``fit``)."""
    plans = {n.name: NodePlan(n, fit.nodes[n.name]) for n in spec.nodes}
    backends: list[Backend] = []
    swarm_backends: list[Backend] = []
    stack: list[svc.Service] = []
    llama_count = {n.name: 0 for n in spec.nodes}
    for p in fit.placements:
        hosts = p.model.nodes if p.model.split == "none" else p.model.nodes[:1]
        for name in hosts:
            llama_count[name] += p.model.engine != "vllm"
    for p in fit.placements:
        model = p.model
        if model.split == "none":
            for name in model.nodes:
                node, np_ = spec.node(name), plans[name]
                s = svc.engine(spec, p, node, _prefix(model, llama_count[name] > 1))
                np_.services.append(s)
                backends.append(_backend(model, node.address))
                stack_svc = svc.engine(spec, p, node, None)
                stack_svc.name = f"{model.name}-{name}"
                stack.append(stack_svc)
                swarm_backends.append(_backend(model, stack_svc.name))
                np_.swarm_engines += 1
        elif model.split == "rpc":
            head = spec.node(model.nodes[0])
            main = svc.engine(
                spec, p, head, _prefix(model, llama_count[head.name] > 1), _rpc_addresses(spec, model)
            )
            plans[head.name].services.append(main)
            plans[head.name].scripts.append(
                Script(
                    f"{model.name}-{'halo-serve' if model.engine == 'halo' else 'llama-server'}.sh",
                    "rpc-main.sh.j2",
                    _rpc_context(spec, p, head, True),
                    HOST_ONLY,
                )
            )
            for name in model.nodes[1:]:
                node = spec.node(name)
                plans[name].services.append(svc.rpc_worker(spec, p, node))
                plans[name].scripts.append(
                    Script(
                        f"{model.name}-rpc-worker.sh",
                        "rpc-worker.sh.j2",
                        _rpc_context(spec, p, node, False),
                        HOST_ONLY,
                    )
                )
            backends.append(_backend(model, head.address))
            swarm_backends.append(_backend(model, head.address))
        else:
            for k, name in enumerate(model.nodes):
                node = spec.node(name)
                plans[name].services.append(svc.ray_node(spec, p, node, head=k == 0))
                kind = "head" if k == 0 else "worker"
                plans[name].scripts.append(
                    Script(f"{model.name}-ray-{kind}.sh", f"ray-{kind}.sh.j2", _tp_context(spec, p, node))
                )
            head = spec.node(model.nodes[0])
            backends.append(_backend(model, head.address))
            swarm_backends.append(_backend(model, head.address))
    head_node = spec.node(spec.gateway.node) if spec.gateway else spec.nodes[0]
    for np_ in plans.values():
        _dotenv(spec, np_, fit)
        np_.scripts.append(_cluster_script(spec, np_, head_node))
        if spec.backend == "rocm":
            np_.services.append(svc.rocm_test(spec, np_.node))
    stack_gateway = None
    if spec.gateway:
        gw_node = spec.node(spec.gateway.node)
        plans[gw_node.name].services.insert(0, svc.gateway(spec, gw_node))
        plans[gw_node.name].gateway = gateway_config(spec.gateway, backends)
        stack.insert(0, svc.gateway(spec, gw_node, swarm=True))
        stack_gateway = gateway_config(spec.gateway, swarm_backends)
    return Layout(spec, fit, list(plans.values()), stack, stack_gateway, [*fit.warnings, *_halo_gaps(fit)])


def _cluster_script(spec: DeploySpec, np_: NodePlan, head_node: Node) -> Script:
    """``halo cluster start`` (head) or ``join`` (the others), with the node's planned budget."""
    usable = np_.memory.budget.usable_bytes
    context: dict[str, object] = {
        "node": np_.node,
        "head": np_.node.name == head_node.name,
        "head_node": head_node,
        "usable_mib": usable // MiB,
        "usable_text": fmt_bytes(usable),
        "gateway_port": spec.gateway.port if spec.gateway else 8090,
    }
    return Script("halo-cluster.sh", "halo-cluster.sh.j2", context, "halo cluster start/join for this node")


def _halo_gaps(fit: FitReport) -> list[str]:
    """Plan settings `halo serve` has no option for (llama-server-only knobs are fine to drop)."""
    harmless = {"LLAMA_ARG_FIT", "LLAMA_ARG_CACHE_RAM", "LLAMA_ARG_MODEL"}
    out = []
    for p in fit.placements:
        if p.model.engine == "halo":
            missing = sorted(set(p.plan.llama_env) - svc.HALO_ENV - harmless)
            if missing:
                out.append(
                    f"{p.model.name}: halo serve has no option for {', '.join(missing)}; use engine llamacpp "
                    "or a context within the model's trained length"
                )
    return out


def _dotenv(spec: DeploySpec, np_: NodePlan, fit: FitReport) -> None:
    node = np_.node
    np_.dotenv = [
        ("MODELS_DIR", node.models_dir, "GGUF files (and vLLM's Hugging Face cache) on this host"),
        ("VIDEO_GID", str(node.video_gid), "getent group video | cut -d: -f3"),
        ("RENDER_GID", str(node.render_gid), "getent group render | cut -d: -f3"),
    ]
    for s in np_.services:
        if s.model is not None and s.model.file and s.env and any(e.name == "LLAMA_ARG_MODEL" for e in s.env):
            p = s.env_prefix
            np_.dotenv.append((f"{p}MODEL_FILE", s.model.file, f"model of service {s.name}, in MODELS_DIR"))
            np_.dotenv.append((f"{p}MODEL_ALIAS", s.model.name, "the model id clients ask for"))
