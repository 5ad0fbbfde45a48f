"""The deploy spec: one YAML file describing nodes, models, the gateway and images (pydantic models).

Field names follow the words users already know: ``ctx``/``parallel``/``cache_type_k`` as in ``halo plan``
and llama-server, sizes in GiB (``128``) or with a unit (``"512MiB"``). Unknown keys are errors, so a
typo never silently falls back to a default. Cross-references (a model placed on an unknown node, two
services on one port) are checked in :mod:`haloserve.deploy.loader`, which knows the file's lines.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from haloserve.deploy import names
from haloserve.units import GiB, parse_size

KVType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
Engine = Literal["llamacpp", "halo", "vllm"]
Split = Literal["none", "rpc", "tensor-parallel"]
Policy = Literal["prefix", "least", "round-robin", "random"]
NODE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # a hostname label
MODEL_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # also a Compose service name
IFNAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,31}$"


def _size(value: object) -> object:
    """GiB for bare numbers, else a size with a unit; pydantic then checks it is an int."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return round(value * GiB)
    if isinstance(value, str):
        try:
            return parse_size(value, "GiB")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]
# Every free-form string is checked against the grammar of what it names (haloserve.deploy.names), so no
# spec value can carry shell, YAML or Dockerfile syntax into the rendered files.
Host = Annotated[str, AfterValidator(names.host)]
AbsPath = Annotated[str, AfterValidator(names.abs_path)]
GitRef = Annotated[str, AfterValidator(names.git_ref)]
OneLine = Annotated[str, AfterValidator(names.printable)]
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    """Base of every spec section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Rdma(Strict):
    """The RoCE interface of a node: used for RCCL/NCCL, llama.cpp RPC and netplan."""

    interface: str = Field(pattern=IFNAME, description="Linux netdev of the RoCE port, e.g. enp1s0f0np0")
    ip: Annotated[str, AfterValidator(names.interface_address)] = Field(
        description="address with prefix on the RDMA network, e.g. 10.0.1.1/24"
    )
    hca: str = Field(
        default="mlx5_0", pattern=IFNAME, description="RDMA device (NCCL_IB_HCA), see `ibv_devices`"
    )
    gid_index: int = Field(
        default=3, ge=0, description="RoCE v2 IPv4 GID index (NCCL_IB_GID_INDEX), see `show_gids`"
    )
    mtu: int = Field(default=9000, ge=1280, le=9216)

    @property
    def address(self) -> str:
        """The address without the prefix length."""
        return str(ipaddress.ip_interface(self.ip).ip)


class Node(Strict):
    """One Strix Halo machine."""

    name: str = Field(pattern=NODE_PATTERN, description="the node's hostname (Swarm pins services by it)")
    address: Host = Field(description="IP or DNS name clients and the gateway use")
    ram: Size = Field(description="installed RAM (GiB, or with a unit)")
    carveout: Size = Field(default=GiB // 2, description="BIOS UMA frame buffer; keep it small (Auto/512 MB)")
    os_reserve: Size = Field(default=8 * GiB, description="RAM kept for Linux and host-side buffers")
    ttm_pages: int | None = Field(
        default=None, gt=0, description="an explicit ttm.pages_limit (default: computed)"
    )
    rdma: Rdma | None = None
    labels: dict[Label, Label] = Field(default_factory=dict, description="Swarm node labels (constraints)")
    video_gid: int = Field(default=44, ge=0, description="`getent group video` on this host")
    render_gid: int = Field(default=992, ge=0, description="`getent group render` on this host")
    models_dir: AbsPath = Field(default="/srv/models", description="where the GGUF files live on this host")


class Sampling(Strict):
    """Default sampling of an engine (a request's own values win)."""

    temp: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)


class Model(Strict):
    """One model and where it runs."""

    name: str = Field(
        pattern=MODEL_PATTERN, description="the model id clients ask for (and the service name)"
    )
    source: OneLine = Field(
        description="what the planner reads: a catalog name, a Hugging Face id in the catalog, or a local "
        "GGUF/config.json"
    )
    quant: Annotated[str, AfterValidator(names.quant)] | None = Field(
        default=None, description="weights quantisation when source is not a GGUF file"
    )
    file: Annotated[str, AfterValidator(names.gguf_file)] | None = Field(
        default=None, description="GGUF file inside the node's models_dir, a relative path (llamacpp, halo)"
    )
    hf: Annotated[str, AfterValidator(names.hf_id)] | None = Field(
        default=None, description="Hugging Face id vLLM loads (default: the catalog's)"
    )
    engine: Engine = "llamacpp"
    nodes: list[str] = Field(
        default_factory=list,
        description="one replica per node (candidates when replicas is set), or the group a split spans",
    )
    replicas: int | None = Field(
        default=None, ge=1, description="this many replicas, placed on the nodes with the most room left"
    )
    split: Split = Field(
        default="none", description="rpc (llama.cpp) or tensor-parallel (vLLM + Ray) over nodes"
    )
    ctx: int | None = Field(default=None, gt=0, description="total context, split across slots")
    parallel: int = Field(default=1, ge=1, le=256, description="slots decoding together")
    cache_type_k: KVType = "f16"
    cache_type_v: KVType = "f16"
    port: Port = 8080
    rpc_port: Port = 50052
    weight: int = Field(default=1, ge=1, description="gateway weight of each replica")
    sampling: Sampling = Sampling()

    extra_args: list[OneLine] = Field(
        default_factory=list, description="appended to the engine's command (each one argument, quoted)"
    )


class Gateway(Strict):
    """``halo gateway`` in front of every replica."""

    node: str = Field(description="the node that runs the gateway (compose); Swarm may move it")
    port: Port = 8000
    policy: Policy = "prefix"
    keys_db: Annotated[str, AfterValidator(names.keys_file)] = "/var/lib/halo/keys.db"
    require_keys: bool = False
    queue_size: int = Field(default=256, ge=0)
    queue_timeout: float = Field(default=30.0, gt=0)
    health_interval: float = Field(default=5.0, gt=0)
    health_timeout: float = Field(default=2.0, gt=0)


class Images(Strict):
    """Image names and the sources they build from."""

    registry: Annotated[str, AfterValidator(names.registry)] = Field(
        default="", description="prefix pushed to and pulled from, e.g. registry.lan:5000/"
    )
    tag: Annotated[str, AfterValidator(names.image_tag)] = "latest"
    llama_cpp_ref: GitRef = Field(
        default="master", description="llama.cpp git branch or tag (pin a release: b6xxx)"
    )
    vllm_ref: GitRef = Field(default="main", description="vLLM git branch or tag")
    haloserve_package: Annotated[str, AfterValidator(names.requirement)] | None = Field(
        default=None,
        description="pip requirement the haloserve image installs instead of the wheel of this checkout "
        "that `halo deploy render` builds",
    )


class DeploySpec(Strict):
    """The whole deployment."""

    version: Literal[1] = 1
    backend: Literal["rocm", "vulkan"] = "rocm"
    rocm_version: str = Field(default="7.0", pattern=r"^\d+\.\d+(\.\d+)?$")
    nodes: list[Node] = Field(min_length=1)
    models: list[Model] = Field(min_length=1)
    gateway: Gateway | None = None
    images: Images = Images()

    def node(self, name: str) -> Node:
        """The node called ``name`` (the loader has checked it exists)."""
        return next(n for n in self.nodes if n.name == name)
