"""A cluster deployment: what to serve, how many replicas, how placed (plain data, no Ray)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from haloserve.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Strategy = Literal["spread", "pack"]


class Deployment(BaseModel):
    """One model served by ``replicas`` copies (or one split over ``nodes`` boxes per replica)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="the model id clients ask for")
    source: str = Field(description="what the planner reads (a GGUF path or a catalog name)")
    path: str = Field(description="the GGUF file halo serve loads on the replica's node")
    node_paths: dict[str, str] = Field(
        default_factory=dict, description="per node name, where the GGUF lives there (else path)"
    )
    replicas: int = Field(default=1, ge=0, le=64)
    split: Literal["none", "rpc"] = "none"
    nodes: int = Field(default=1, ge=1, le=16, description="boxes one replica spans (split rpc)")
    strategy: Strategy = "spread"
    candidates: list[str] = Field(default_factory=list, description="node names allowed (empty: any)")
    ctx: int | None = Field(default=None, gt=0)
    parallel: int = Field(default=1, ge=1, le=256)
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    serve_args: list[str] = Field(default_factory=list, description="more halo serve flags, verbatim")
    need_mib: list[int] = Field(default_factory=list, description="planned MiB per bundle (filled in)")
    plan_summary: str = ""

    def path_on(self, node: str) -> str:
        """The model file on ``node``."""
        return self.node_paths.get(node, self.path)

    def serve_command(self, node: str, host: str, port: int, rpc: list[str] | None = None) -> list[str]:
        """``halo serve`` arguments (after ``python -m haloserve``) for one replica on ``node``."""
        args = [
            "serve",
            "--model",
            self.path_on(node),
            "--alias",
            self.name,
            "--host",
            host,
            "--port",
            str(port),
            "--ctx-size",
            str(self.ctx or 0),
            "--parallel",
            str(self.parallel),
            "--cache-type-k",
            self.cache_type_k,
            "--cache-type-v",
            self.cache_type_v,
        ]
        if rpc:
            args += ["--rpc", ",".join(rpc)]
        return [*args, *self.serve_args]


def check_name(name: str) -> str:
    """A deployment name: letters, digits, ``.``, ``_``, ``-`` (it becomes actor and file names)."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def from_deploy_spec(path: str) -> list[Deployment]:
    """The deployments of a ``halo deploy`` spec file (models served by ``halo serve``/llama.cpp).

    ``nodes:`` name the candidate nodes (the cluster's node names), ``file:`` is looked up in each node's
    ``models_dir`` and ``source:`` is what the planner reads, as for ``halo deploy``.
    """
    from pathlib import Path

    from haloserve.deploy.loader import load_spec

    doc = load_spec(Path(path))
    out = []
    for m in doc.spec.models:
        if m.engine == "vllm":
            raise ConfigError(f"{path}: {m.name}: engine vllm is not served by halo cluster (halo deploy is)")
        if m.split == "tensor-parallel":
            raise ConfigError(
                f"{path}: {m.name}: split tensor-parallel is vLLM's; halo cluster splits with rpc"
            )
        node_paths = {}
        if m.file:
            node_paths = {n.name: str(Path(n.models_dir) / m.file) for n in doc.spec.nodes}
        split = m.split == "rpc"
        out.append(
            Deployment(
                name=m.name,
                source=m.source,
                path=m.source,
                node_paths=node_paths,
                replicas=1 if split else (m.replicas or max(1, len(m.nodes))),
                split="rpc" if split else "none",
                nodes=len(m.nodes) if split else 1,
                candidates=list(m.nodes),
                ctx=m.ctx,
                parallel=m.parallel,
                cache_type_k=m.cache_type_k,
                cache_type_v=m.cache_type_v,
                serve_args=list(m.extra_args),
            )
        )
    return out
