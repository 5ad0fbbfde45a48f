"""Shared fixtures of the deploy tests: the example specs, their rendered files, and the Compose schema.

The tests validate against the project's bundled ``compose-spec.json``; only the test comparing that copy
with ``../shared/schemas`` needs ``../shared`` and is skipped on a clone without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from haloserve.deploy import RenderedFile, load_spec_text, render_files
from haloserve.deploy.examples import example_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {"one": 1, "four": 4}


def shared_dir() -> Path | None:
    """``../shared`` beside the checkout; from a git worktree, beside the main checkout (``None``: absent)."""
    candidates = [REPO.parent / "shared"]
    git = REPO / ".git"
    if git.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"
        gitdir = Path(git.read_text(encoding="utf-8").split(":", 1)[1].strip())
        candidates.append(gitdir.parents[2].parent / "shared")
    for path in candidates:
        if (path / "schemas" / "compose-spec.json").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema bundled with the package (what `halo deploy check` uses)."""
    from haloserve.deploy.check import compose_schema as bundled

    return bundled()


@pytest.fixture(scope="session")
def shared_schema() -> dict[str, Any]:
    """The Compose Specification schema from ``../shared/schemas`` (skipped where there is none)."""
    shared = shared_dir()
    if shared is None:
        pytest.skip("no ../shared/schemas/compose-spec.json beside this checkout")
    data: dict[str, Any] = json.loads((shared / "schemas" / "compose-spec.json").read_text())
    return data


def render_text(text: str) -> dict[str, RenderedFile]:
    """Render a spec given as YAML text."""
    return render_files(load_spec_text(text, "spec.yaml").spec)


@pytest.fixture(scope="session")
def rendered() -> dict[str, dict[str, RenderedFile]]:
    """The files of each example spec, plus variants: ROCm 6.4.1 and the Vulkan backend."""
    out = {name: render_text(example_spec(n)) for name, n in EXAMPLES.items()}
    out["four-rocm641"] = render_text(example_spec(4).replace('rocm_version: "7.0"', 'rocm_version: "6.4.1"'))
    out["one-vulkan"] = render_text(example_spec(1).replace("backend: rocm", "backend: vulkan"))
    out["mixed"] = render_text(MIXED)
    out["rpc-halo"] = render_text(RPC_HALO)
    return out


# Two engines of one node sharing its .env, vLLM as a plain replica, a gateway, no RDMA.
MIXED = """
nodes:
  - {name: a, address: 10.1.0.1, ram: 128, labels: {zone: left}}
  - {name: b, address: 10.1.0.2, ram: 64}
models:
  - {name: coder, source: qwen3-coder-30b-a3b, file: coder.gguf, nodes: [a, b], ctx: 65536, parallel: 2}
  - {name: small, source: qwen3-4b, file: small.gguf, engine: halo, nodes: [a], port: 8081}
  - {name: qwen3-8b, source: qwen3-8b, engine: vllm, quant: BF16, nodes: [b], port: 8001, ctx: 16384}
gateway: {node: a, policy: least}
"""


# halo serve split over two unequal boxes with llama.cpp's RPC backend (the spec of docs/rpc.md).
RPC_HALO = """\
# Two Strix Halo boxes on a RoCE link: one model split by halo serve over llama.cpp's RPC backend.
nodes:
  - name: halo1
    address: 192.168.1.11
    ram: 128
    rdma: {interface: enp1s0f0np0, ip: 10.0.1.1/24}
  - name: halo2
    address: 192.168.1.12
    ram: 64
    rdma: {interface: enp1s0f0np0, ip: 10.0.1.2/24}
models:
  - name: qwen3-235b
    source: qwen3-235b-a22b
    quant: Q4_K_M
    file: Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf
    engine: halo
    split: rpc
    nodes: [halo1, halo2]   # halo1 runs halo serve --rpc, halo2 runs halo rpc-worker
    ctx: 32768
    cache_type_k: q8_0
    cache_type_v: q8_0
gateway: {node: halo1}
"""
# Golden directories rendered from a spec text instead of `halo deploy init`.
GOLDEN_SPECS = {"rpc-halo": RPC_HALO}


def write(files: dict[str, RenderedFile], root: Path) -> Path:
    """Write rendered files under ``root`` (as `halo deploy render` does)."""
    from haloserve.deploy import write_files

    write_files(files, root)
    return root
