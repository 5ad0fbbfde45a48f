"""The services a deployment runs, as plain data the templates turn into Compose and Swarm files.

One builder per role: an engine replica (llama.cpp, ``halo serve`` or vLLM), the main server of an RPC
split (``llama-server`` or ``halo serve --rpc``) and its workers (``rpc-server`` or ``halo rpc-worker``),
the Ray head (which launches ``vllm serve``) and Ray
workers of a tensor-parallel split, the gateway, and the ROCm test container. Every setting comes from
the spec or from the planner's plan (``LLAMA_ARG_*`` and ``vllm serve`` arguments); nothing is computed
twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from haloserve.config.serve import ServeSettings
from haloserve.deploy.fit import Placement
from haloserve.deploy.gateway_config import CONFIG_PATH
from haloserve.deploy.rocm import EnvVar, gpu_targets, rocm_env
from haloserve.deploy.spec import DeploySpec, Model, Node

# "$$" is Compose's escape for a literal "$" (it interpolates "$..." itself)
RPC_BIN = 'exec "$$(command -v ggml-rpc-server || command -v rpc-server)"'
# halo rpc-worker's tensor cache on the host: a restarted main node reloads without resending the weights
RPC_CACHE_DIR = "/var/cache/halo-rpc"
ENV_NOTES = {
    "LLAMA_ARG_CTX_SIZE": "total context, split across the slots (from the plan)",
    "LLAMA_ARG_N_PARALLEL": "slots decoding together",
    "LLAMA_ARG_CACHE_TYPE_K": "KV cache type of K",
    "LLAMA_ARG_CACHE_TYPE_V": "KV cache type of V (quantised V needs flash attention)",
    "LLAMA_ARG_N_GPU_LAYERS": "every layer on the GPU",
    "LLAMA_ARG_FIT": "the plan already checked the fit; do not let llama.cpp shrink the context",
    "LLAMA_ARG_CACHE_RAM": "MiB of prompt cache in system RAM, sized to what Linux has left",
    "LLAMA_ARG_MMAP": "mmap loading is very slow on ROCm UMA (llama.cpp issue 15018)",
    "LLAMA_ARG_JINJA": "the model's chat template (tool calling)",
    "LLAMA_ARG_RPC": "--rpc: rpc-server workers on the private RDMA network (no authentication)",
    "LLAMA_ARG_TENSOR_SPLIT": "layer split by usable memory: each worker in --rpc order, then the local GPU",
    "LLAMA_ARG_ROPE_SCALING_TYPE": "context per slot is past the trained context: YaRN",
}


@dataclass
class Image:
    """An image and how to build it."""

    name: str
    dockerfile: str
    args: dict[str, str]


@dataclass
class Service:
    """One container: the fields a Compose service needs, plus comments and placement."""

    name: str
    node: str
    image: Image
    about: list[str]
    command: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    env: list[EnvVar] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    gpu: bool = True
    rdma: bool = False
    host_network: bool = False
    health: list[str] | None = None
    health_note: str = ""
    start_period: str = "15m"
    profiles: list[str] = field(default_factory=list)
    swarm: bool = True
    model: Model | None = None
    env_prefix: str = ""


def images(spec: DeploySpec) -> dict[str, Image]:
    """Every image of the deployment by role, named from ``images:``."""
    reg, tag, rocm = spec.images.registry, spec.images.tag, spec.rocm_version
    gpu = {"ROCM_VERSION": rocm, "GPU_TARGETS": gpu_targets(rocm)}
    llama = {"LLAMA_CPP_REF": spec.images.llama_cpp_ref}
    return {
        "llamacpp": Image(
            f"{reg}halo-llamacpp-{spec.backend}:{tag}",
            f"llamacpp-{spec.backend}.Dockerfile",
            {**llama, **gpu} if spec.backend == "rocm" else llama,
        ),
        "vllm": Image(
            f"{reg}halo-vllm-rocm:{tag}", "vllm-rocm.Dockerfile", {"VLLM_REF": spec.images.vllm_ref, **gpu}
        ),
        "halo": Image(
            f"{reg}haloserve-{spec.backend}:{tag}",
            "haloserve.Dockerfile",
            {
                **({"HALOSERVE_PACKAGE": pkg} if (pkg := spec.images.haloserve_package) else {}),
                **(gpu if spec.backend == "rocm" else {}),
            },
        ),
        "rocm-test": Image(f"{reg}halo-rocm-test:{tag}", "rocm-test.Dockerfile", gpu),
    }


def gpu_env(spec: DeploySpec, llama: bool = True) -> list[EnvVar]:
    """ROCm variables for the ROCm backend (``llama=False``: without llama.cpp's own); RADV for Vulkan."""
    if spec.backend == "rocm":
        return rocm_env(spec.rocm_version, llama)
    return [EnvVar("AMD_VULKAN_ICD", "RADV", "Mesa's RADV driver (faster than AMDVLK for llama.cpp)")]


def netloc(host: str) -> str:
    """``host`` as it goes before ``:port`` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _http_health(port: int) -> list[str]:
    return ["CMD", "curl", "-fsS", f"http://127.0.0.1:{port}/health"]


def sampling_flags(model: Model) -> list[str]:
    """``--temp``, ``--top-p`` and ``--min-p`` from the spec's default sampling."""
    s = model.sampling
    pairs = [("--temp", s.temp), ("--top-p", s.top_p), ("--min-p", s.min_p)]
    return [x for flag, v in pairs if v is not None for x in (flag, f"{v:g}")]


def vllm_command(p: Placement) -> list[str]:
    """``vllm serve`` with the plan's arguments, the served name, the port and default sampling."""
    model = p.model
    args = [*p.plan.vllm_args, "--served-model-name", model.name]
    args += ["--host", "0.0.0.0", "--port", str(model.port)]
    s = model.sampling
    defaults = {"temperature": s.temp, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p}
    defaults = {k: v for k, v in defaults.items() if v is not None}
    if defaults:
        args += ["--override-generation-config", json.dumps(defaults, separators=(",", ":"))]
    return [*args, *model.extra_args]


HALO_ENV = {name for f in ServeSettings.model_fields for name in ServeSettings.env_names(f)}


def llama_env(spec: DeploySpec, p: Placement, prefix: str | None, rpc: list[str]) -> list[EnvVar]:
    """``LLAMA_ARG_*`` for llama-server or ``halo serve``: the plan's settings plus serving ones.

    ``prefix`` names the ``.env`` variables holding the model file and alias (``None``: write the values,
    for the Swarm stack, which has no ``.env``).
    """
    model = p.model
    plan_env = {k: v for k, v in p.plan.llama_env.items() if k not in ("LLAMA_ARG_MODEL", "LLAMA_ARG_RPC")}
    if not rpc:
        plan_env.pop("LLAMA_ARG_TENSOR_SPLIT", None)
    values = {
        "LLAMA_ARG_MODEL": f"/models/{model.file}" if prefix is None else f"/models/${{{prefix}MODEL_FILE}}",
        "LLAMA_ARG_ALIAS": model.name if prefix is None else f"${{{prefix}MODEL_ALIAS}}",
        "LLAMA_ARG_HOST": "0.0.0.0",
        "LLAMA_ARG_PORT": str(model.port),
        **plan_env,
        "LLAMA_ARG_MMAP": "false",
        "LLAMA_ARG_JINJA": "true",
        "LLAMA_ARG_ENDPOINT_METRICS": "true",
    }
    if model.sampling.top_k is not None:
        values["LLAMA_ARG_TOP_K"] = str(model.sampling.top_k)
    if rpc:
        values["LLAMA_ARG_RPC"] = ",".join(rpc)
    if model.engine == "halo":  # halo serve takes the split as flags (halo_rpc_flags), not variables
        drop = ("LLAMA_ARG_RPC", "LLAMA_ARG_TENSOR_SPLIT")
        values = {k: v for k, v in values.items() if k in HALO_ENV and k not in drop}
    notes = dict(ENV_NOTES)
    notes["LLAMA_ARG_MODEL"] = "" if prefix is None else f"set {prefix}MODEL_FILE in .env to switch models"
    return [EnvVar(k, v, notes.get(k, "")) for k, v in values.items()] + gpu_env(spec)


def engine(
    spec: DeploySpec, p: Placement, node: Node, prefix: str | None, rpc: list[str] | None = None
) -> Service:
    """One replica of a model on ``node`` (or the main server of an RPC split when ``rpc`` is given);
    ``prefix=None`` renders it for the Swarm stack (literal paths, no ``.env``)."""
    model, imgs = p.model, images(spec)
    name = model.name
    models = "${MODELS_DIR}" if prefix is not None else node.models_dir
    if model.engine == "vllm":
        return Service(
            name,
            node.name,
            imgs["vllm"],
            [f"{model.name}: vLLM on {node.name} ({p.resolved.spec.name})"],
            command=vllm_command(p),
            env=[
                EnvVar("HF_HOME", "/models/huggingface", "weights download into the models volume"),
                *gpu_env(spec, llama=False),
            ],
            ports=[f"{model.port}:{model.port}"],
            volumes=[f"{models}:/models"],
            health=_http_health(model.port),
            model=model,
        )
    image = imgs["halo" if model.engine == "halo" else "llamacpp"]
    command = ["halo", "serve", *halo_rpc_flags(p, rpc or [])] if model.engine == "halo" else []
    what = "halo serve" if model.engine == "halo" else "llama-server"
    about = [f"{model.name}: {what} on {node.name} ({p.resolved.spec.name}, {p.resolved.weights.quant})"]
    if rpc:
        about.append(f"main server of an RPC split over {len(model.nodes)} nodes: {', '.join(model.nodes)}")
    return Service(
        name,
        node.name,
        image,
        about,
        command=[*command, *sampling_flags(model), *model.extra_args],
        env=llama_env(spec, p, prefix, rpc or []),
        ports=[f"{model.port}:{model.port}"],
        volumes=[f"{models}:/models:ro"],
        health=_http_health(model.port),
        swarm=not rpc,
        model=model,
        env_prefix=prefix or "",
    )


def halo_rpc_flags(p: Placement, rpc: list[str]) -> list[str]:
    """``--rpc`` and ``--tensor-split`` of ``halo serve`` on the main node of a split (none without one)."""
    if not rpc or p.plan.cluster is None:
        return []
    return ["--rpc", ",".join(rpc), "--tensor-split", p.plan.cluster.tensor_split]


def rpc_bind(node: Node) -> str:
    """The private address an RPC worker listens on: the RoCE address, else the node's address."""
    return node.rdma.address if node.rdma else node.address


def halo_rpc_worker_command(p: Placement, node: Node) -> list[str]:
    """``halo rpc-worker`` bound to the node's private address, with its tensor cache."""
    port = str(p.model.rpc_port)
    return ["halo", "rpc-worker", "--host", rpc_bind(node), "--port", port, "--cache", RPC_CACHE_DIR]


def rpc_worker(spec: DeploySpec, p: Placement, node: Node) -> Service:
    """The worker of an RPC split: ``halo rpc-worker`` (engine halo) or llama.cpp's ``rpc-server``."""
    model = p.model
    bind = rpc_bind(node)
    if model.engine == "halo":
        return Service(
            f"{model.name}-rpc",
            node.name,
            images(spec)["halo"],
            [
                f"{model.name}: halo rpc-worker on {node.name}, worker of the split led by {model.nodes[0]}",
                f"host network, listening on {bind} only: the RPC protocol has no authentication",
                f"--cache keeps the tensors it received in {RPC_CACHE_DIR}: a reload does not resend them",
            ],
            command=halo_rpc_worker_command(p, node),
            env=gpu_env(spec),
            volumes=[f"{RPC_CACHE_DIR}:{RPC_CACHE_DIR}"],
            host_network=True,
            health=None,
            health_note=f"no health check: /health of halo serve on {model.nodes[0]} names a lost worker",
            swarm=False,
            model=model,
        )
    return Service(
        f"{model.name}-rpc",
        node.name,
        images(spec)["llamacpp"],
        [
            f"{model.name}: llama.cpp rpc-server on {node.name}, worker of the split led by {model.nodes[0]}",
            "ggml-rpc-server in recent llama.cpp, rpc-server in older builds; -c caches tensors on disk",
            f"published on {bind} only: the RPC protocol has no authentication",
        ],
        entrypoint=["/bin/sh", "-c", f"{RPC_BIN} -H 0.0.0.0 -p {model.rpc_port} -c"],
        env=gpu_env(spec),
        ports=[f"{netloc(bind)}:{model.rpc_port}:{model.rpc_port}"],
        health=None,
        health_note="no health check: a probe would hold rpc-server's single connection",
        swarm=False,
        model=model,
    )


def ray_node(spec: DeploySpec, p: Placement, node: Node, head: bool) -> Service:
    """The Ray head (which launches ``vllm serve``) or a Ray worker of a tensor-parallel split."""
    model = p.model
    script = f"{model.name}-ray-{'head' if head else 'worker'}.sh"
    role = "Ray head, which runs vllm serve once every worker joined," if head else "Ray worker"
    return Service(
        f"{model.name}-ray-{'head' if head else 'worker'}",
        node.name,
        images(spec)["vllm"],
        [
            f"{model.name}: {role} on {node.name}, tensor parallel over {len(model.nodes)} nodes",
            f"host network: Ray and RCCL open many ports; the same script runs on the host: scripts/{script}",
        ],
        entrypoint=["/bin/bash", f"/halo/scripts/{script}"],
        env=[
            EnvVar("HF_HOME", "/models/huggingface", "weights download into the models volume"),
            *gpu_env(spec, llama=False),
        ],
        volumes=["${MODELS_DIR}:/models", "./scripts:/halo/scripts:ro"],
        rdma=True,
        host_network=True,
        health=_http_health(model.port) if head else ["CMD", "ray", "status"],
        swarm=False,
        model=model,
    )


def gateway(spec: DeploySpec, node: Node, swarm: bool = False) -> Service:
    """``halo gateway`` with the rendered ``gateway.yaml``."""
    assert spec.gateway is not None
    gw = spec.gateway
    keys_dir = gw.keys_db.rsplit("/", 1)[0] or "/"
    return Service(
        "gateway",
        node.name,
        images(spec)["halo"],
        ["halo gateway: one OpenAI endpoint in front of every replica (config: gateway.yaml)"],
        command=["halo", "gateway", "--config", CONFIG_PATH],
        ports=[f"{gw.port}:{gw.port}"],
        volumes=[] if swarm else ["./gateway.yaml:" + CONFIG_PATH + ":ro", f"halo-keys:{keys_dir}"],
        gpu=False,
        health=_http_health(gw.port),
        start_period="1m",
    )


def rocm_test(spec: DeploySpec, node: Node) -> Service:
    """The ROCm test container (profile ``test``): rocminfo, rocm-smi and a HIP matmul."""
    return Service(
        "rocm-test",
        node.name,
        images(spec)["rocm-test"],
        [
            "GPU check without the LLM server (seed 001's rocm-test):",
            "docker compose --profile test run --rm rocm-test",
        ],
        command=["/opt/rocm-test/verify-rocm.sh"],
        env=gpu_env(spec),
        profiles=["test"],
        swarm=False,
    )
