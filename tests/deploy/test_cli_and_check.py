"""`halo deploy init|render|check` through the real CLI, and `check` catching hand edits that break things."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haloserve.cli import main
from haloserve.deploy import RenderedFile, check_fit, load_spec_text
from haloserve.deploy.check import check_file
from haloserve.deploy.examples import example_spec
from haloserve.planner import PlanInputs, plan_model, resolve_model
from tests.deploy.conftest import write

Rendered = dict[str, dict[str, RenderedFile]]


@pytest.mark.process
def test_init_writes_a_spec_that_renders_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "cluster.yaml"
    assert main(["deploy", "init", "--nodes", "4", "-o", str(spec)]) == 0
    assert spec.read_text() == example_spec(4, "cluster.yaml")
    assert main(["deploy", "init", "-o", str(spec)]) == 1  # no silent overwrite
    assert "exists (use --force" in capsys.readouterr().err
    out = tmp_path / "deploy"
    assert main(["deploy", "render", str(spec), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "nodes/halo1/docker-compose.yml" in report["files"]
    assert report["nodes"]["halo1"]["ttm_pages_limit"] == 31_326_208
    assert main(["deploy", "check", str(out)]) == 0
    assert "halo deploy check" in capsys.readouterr().out
    assert main(["deploy", "check", str(out), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results and all(r["ok"] for r in results)


def test_init_to_stdout_and_bad_node_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "init", "--nodes", "2"]) == 0
    assert "split: rpc" in capsys.readouterr().out
    assert main(["deploy", "init", "--nodes", "0"]) == 2
    assert capsys.readouterr().err.strip() == "halo deploy: error: --nodes must be between 1 and 64 (got 0)"
    assert main(["deploy"]) == 2


@pytest.mark.parametrize("nodes", [2, 3, 5])
@pytest.mark.slow
def test_every_init_size_renders(nodes: int) -> None:
    from haloserve.deploy import render_files
    from haloserve.deploy.check import check_compose

    doc = load_spec_text(example_spec(nodes))
    files = render_files(doc.spec)
    composes = [f for p, f in files.items() if p.endswith(("docker-compose.yml", "stack.yml"))]
    assert len(composes) == nodes + 1
    for f in composes:
        assert check_compose(f.text) == [], f.path


def test_fit_uses_the_planners_numbers() -> None:
    doc = load_spec_text(example_spec(1))
    fit = check_fit(doc.spec)
    node = fit.nodes["halo1"]
    model = resolve_model("qwen3-coder-next", "Q8_0")
    inputs = PlanInputs(ctx=524288, parallel=2, type_k="q8_0", type_v="q8_0")
    plan = plan_model(model.spec, model.weights, node.budget, inputs)
    assert node.used == {"qwen3-coder-next": plan.memory.total_bytes}
    assert node.budget.usable_bytes == 120 * 2**30


@pytest.mark.process
def test_render_refuses_a_foreign_directory_and_removes_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(example_spec(4))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    assert main(["deploy", "render", str(spec), "-o", str(foreign)]) == 1
    assert "not written by `halo deploy render`" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["deploy", "render", str(spec), "-o", str(out)]) == 0
    assert (out / "nodes/halo4/scripts/qwen3-235b-rpc-worker.sh").stat().st_mode & 0o111
    spec.write_text(example_spec(2))  # halo3 and halo4 disappear
    assert main(["deploy", "render", str(spec), "-o", str(out)]) == 0
    assert "removed" in capsys.readouterr().out
    assert not (out / "nodes/halo4/docker-compose.yml").exists()


COMPOSE1, COMPOSE3 = "nodes/halo1/docker-compose.yml", "nodes/halo3/docker-compose.yml"
COMPOSE4 = "nodes/halo4/docker-compose.yml"
LLAMA = "docker/llamacpp-rocm.Dockerfile"
BREAKS = [
    ("nodes/halo3/docker-compose.yml", 'MMAP: "false"', 'MMAP: "true"', "LLAMA_ARG_MMAP=false"),
    (COMPOSE1, "    ipc: host\n", "", "needs ipc: host"),
    (
        COMPOSE1,
        '      ROCBLAS_USE_HIPBLASLT: "1"',
        '      HSA_OVERRIDE_GFX_VERSION: "11.0.0"\n      ROCBLAS_USE_HIPBLASLT: "1"',
        "HSA_OVERRIDE_GFX_VERSION on ROCm 7.0",
    ),
    (COMPOSE1, "restart: unless-stopped", "restart: [always]", "schema: services/"),
    (COMPOSE1, '"8080:8080"', '"8000:8080"', "host port 8000 is also published"),
    (COMPOSE4, '"$$(command', '"$(command', "write $$ for a literal dollar"),
    (LLAMA, "-DGGML_HIP_ROCWMMA_FATTN=ON", "", "missing -DGGML_HIP_ROCWMMA_FATTN=ON"),
    (LLAMA, "ARG GPU_TARGETS=gfx1151", "ARG GPU_TARGETS=gfx1150", "gfx1150 is Strix Point"),
    (LLAMA, "-DGGML_RPC=ON", "-DGGHL_MPI=ON", "no MPI backend"),
    ("nodes/halo4/scripts/qwen3-235b-rpc-worker.sh", '-z "${bin}"', "-z ${bin", "bash -n"),
    ("nodes/halo1/host-setup.sh", "sudo usermod", "sudo echo 1 > /sys/x; sudo usermod", "| sudo tee"),
    ("nodes/halo1/gateway.yaml", "queue_size: 256\n", "", "missing key queue_size"),
    ("nodes/halo1/60-halo-rdma.yaml", "mtu: 9000", "mtu: 1500", "RoCE needs 9000"),
]


@pytest.mark.parametrize(("rel", "old", "new", "message"), BREAKS, ids=[b[3] for b in BREAKS])
@pytest.mark.slow
def test_check_catches_a_hand_edit(
    rel: str, old: str, new: str, message: str, rendered: Rendered, tmp_path: Path
) -> None:
    root = write(rendered["four"], tmp_path / "four")
    path = root / rel
    text = path.read_text()
    assert old in text
    assert check_file(root, rel).ok  # type: ignore[union-attr]
    path.write_text(text.replace(old, new, 1))
    result = check_file(root, rel)
    assert result is not None and not result.ok
    assert any(message in p for p in result.problems), result.problems


def test_gateway_yaml_loads_in_halo_gateway(rendered: Rendered, tmp_path: Path) -> None:
    """The rendered gateway.yaml is what `halo gateway --config` reads (runs once the gateway is merged)."""
    gateway = pytest.importorskip("haloserve.config.gateway", reason="halo gateway is not in this tree yet")
    from haloserve.config import load_settings

    for rel in ("nodes/halo1/gateway.yaml", "swarm/gateway.yaml"):
        path = tmp_path / rel.replace("/", "-")
        path.write_text(rendered["four"][rel].text)
        settings = load_settings(gateway.GatewaySettings, file=path, env={})
        assert settings.port == 8000 and settings.policy == "prefix"
        assert len(settings.backends) == 6
        assert settings.backends[0].models == ["qwen3-8b"] and settings.backends[0].max_concurrency == 4


def test_check_finds_compose_variables_missing_from_dotenv(rendered: Rendered, tmp_path: Path) -> None:
    root = write(rendered["four"], tmp_path / "four")
    assert check_file(root, COMPOSE3).ok  # type: ignore[union-attr]
    dotenv = root / "nodes/halo3/.env"
    dotenv.write_text(dotenv.read_text().replace("QWEN3_8B_MODEL_ALIAS=", "MODEL_ALIAS="))
    result = check_file(root, COMPOSE3)
    assert result is not None and result.problems == ("${QWEN3_8B_MODEL_ALIAS} is not set in .env",)
    dotenv.unlink()
    result = check_file(root, COMPOSE3)
    assert result is not None and "${VIDEO_GID} has no default and there is no .env" in " ".join(
        result.problems
    )
