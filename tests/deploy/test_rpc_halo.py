"""``engine: halo``, ``split: rpc``: halo rpc-worker on the workers, halo serve --rpc on the main node."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from haloserve.cli.options import settings_flags
from haloserve.cli.serve import add_arguments as serve_arguments
from haloserve.config import load_settings
from haloserve.config.serve import ServeSettings
from haloserve.deploy import RenderedFile, SpecError, check_fit, load_spec_text
from haloserve.deploy.check import check_dir, check_file
from haloserve.deploy.examples import example_spec
from tests.deploy.conftest import RPC_HALO, write

Rendered = dict[str, dict[str, RenderedFile]]


def services(files: dict[str, RenderedFile], node: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(files[f"nodes/{node}/docker-compose.yml"].text)
    return data["services"]  # type: ignore[no-any-return]


def test_worker_is_halo_rpc_worker_on_the_private_address(rendered: Rendered) -> None:
    worker = services(rendered["rpc-halo"], "halo2")["qwen3-235b-rpc"]
    assert worker["command"] == [
        "halo", "rpc-worker", "--host", "10.0.1.2", "--port", "50052", "--cache", "/var/cache/halo-rpc"
    ]  # fmt: skip
    assert worker["image"].startswith("haloserve-")
    # host network: it binds the RoCE address itself; nothing is published on every interface
    assert worker["network_mode"] == "host" and "ports" not in worker
    assert "0.0.0.0" not in yaml.safe_dump(worker)
    script = rendered["rpc-halo"]["nodes/halo2/scripts/qwen3-235b-rpc-worker.sh"].text
    assert "exec halo rpc-worker --host 10.0.1.2 --port 50052 --cache /var/cache/halo-rpc" in script
    assert "0.0.0.0" not in script


def test_without_rdma_the_worker_binds_the_node_address() -> None:
    from haloserve.deploy import render_files

    text = RPC_HALO.replace("    rdma: {interface: enp1s0f0np0, ip: 10.0.1.2/24}\n", "")
    files = render_files(load_spec_text(text).spec)
    assert services(files, "halo2")["qwen3-235b-rpc"]["command"][2:4] == ["--host", "192.168.1.12"]
    assert "--rpc" in (main := services(files, "halo1")["qwen3-235b"]["command"])
    assert main[main.index("--rpc") + 1] == "192.168.1.12:50052"


def test_main_runs_halo_serve_with_the_split(rendered: Rendered) -> None:
    main = services(rendered["rpc-halo"], "halo1")["qwen3-235b"]
    command = main["command"]
    assert command[:2] == ["halo", "serve"]
    # 64 GB worker (56 GiB usable) first, then the 128 GB main node (120 GiB): llama.cpp's device order
    assert command[2:] == ["--rpc", "10.0.1.2:50052", "--tensor-split", "56,120"]
    env = main["environment"]
    assert "LLAMA_ARG_RPC" not in env and "LLAMA_ARG_TENSOR_SPLIT" not in env  # said once, as flags
    parser = argparse.ArgumentParser()
    serve_arguments(parser)
    env = {k: v.replace("${MODEL_FILE}", "m.gguf").replace("${MODEL_ALIAS}", "a") for k, v in env.items()}
    flags = settings_flags(parser.parse_args(command[2:]), ServeSettings)
    settings = load_settings(ServeSettings, flags=flags, env=env)
    assert settings.tensor_split == [56.0, 120.0] and settings.rpc == ["10.0.1.2:50052"]
    script = rendered["rpc-halo"]["nodes/halo1/scripts/qwen3-235b-halo-serve.sh"].text
    assert script.rstrip().endswith("exec halo serve --rpc 10.0.1.2:50052 --tensor-split 56,120")
    backends = yaml.safe_load(rendered["rpc-halo"]["nodes/halo1/gateway.yaml"].text)["backends"]
    assert [b["url"] for b in backends] == ["http://192.168.1.11:8080"]


def test_each_share_is_checked_against_its_own_node() -> None:
    fit = check_fit(load_spec_text(RPC_HALO).spec)
    (p,) = fit.placements
    assert p.plan.cluster is not None
    worker, main = p.plan.cluster.rpc
    assert main.holds_output and p.per_node == {"halo2": worker.total_bytes, "halo1": main.total_bytes}
    # the shares follow 56:120, so the smaller box holds fewer layers
    assert worker.total_bytes < main.total_bytes < fit.nodes["halo1"].budget.usable_bytes
    assert p.verdict == "fits" and p.plan.verdict == "does not fit"  # the plan alone uses the smallest node
    assert not any("of RAM is left" in w for w in fit.warnings)


def test_llamacpp_split_gives_the_main_node_the_output_share() -> None:
    fit = check_fit(load_spec_text(example_spec(4)).spec)
    p = next(p for p in fit.placements if p.model.split == "rpc")
    assert p.plan.cluster is not None and p.plan.cluster.rpc[-1].holds_output
    assert p.per_node["halo3"] == p.plan.cluster.rpc[-1].total_bytes  # halo3 runs llama-server


def test_a_worker_needs_an_ipv4_address() -> None:
    text = RPC_HALO.replace("    rdma: {interface: enp1s0f0np0, ip: 10.0.1.2/24}\n", "").replace(
        "address: 192.168.1.12", "address: halo2.lan"
    )
    with pytest.raises(
        SpecError, match=r"spec\.yaml:\d+: models\[0\]\.nodes\[1\]: node 'halo2' would run halo rpc-worker"
    ):
        load_spec_text(text, "spec.yaml")
    load_spec_text(text.replace("engine: halo", "engine: llamacpp"), "spec.yaml")  # rpc-server resolves names


def test_split_rpc_refuses_vllm() -> None:
    text = RPC_HALO.replace("engine: halo", "engine: vllm")
    with pytest.raises(
        SpecError, match=r"split rpc runs llama\.cpp's RPC backend: use engine halo or llamacpp"
    ):
        load_spec_text(text, "spec.yaml")


@pytest.mark.slow
def test_check_accepts_the_render_and_flags_a_wildcard_worker(rendered: Rendered, tmp_path: Path) -> None:
    root = write(rendered["rpc-halo"], tmp_path / "rpc")
    results = check_dir(root)
    assert all(r.ok for r in results), [(r.path, r.problems) for r in results if not r.ok]
    rel = "nodes/halo2/docker-compose.yml"
    path = root / rel
    path.write_text(path.read_text().replace('"--host", "10.0.1.2"', '"--host", "0.0.0.0"'))
    result = check_file(root, rel)
    assert result is not None and not result.ok
    assert any("--host 0.0.0.0 listens on every interface" in p for p in result.problems), result.problems
