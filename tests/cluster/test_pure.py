"""The pure parts of halo cluster: node memory, placement, backoff, spec files, command lines."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from haloserve.cli import main
from haloserve.cluster.memory import detect_memory, memory_from_facts
from haloserve.cluster.node import NodeOptions, check_reachable, ray_command, split_address
from haloserve.cluster.placement import NodeRoom, PlacementError, place
from haloserve.cluster.replica import _load_from_metrics, backoff
from haloserve.cluster.spec import Deployment, from_deploy_spec
from haloserve.errors import ConfigError, HaloError
from haloserve.testing.remote import free_port
from haloserve.units import GiB


def rooms(**free: int) -> list[NodeRoom]:
    return [NodeRoom(name, total) for name, total in free.items()]


def test_apu_memory_is_carveout_plus_gtt_under_the_ttm_limit() -> None:
    # 128 GB box, 512 MiB carve-out, ttm.pages_limit for 100 GiB: GTT capped by what Linux can spare
    mem = memory_from_facts(mem_total=128 * GiB - GiB // 2, carveout=GiB // 2, ttm_pages=100 * 262144)
    assert mem.usable_bytes == GiB // 2 + 100 * GiB
    assert "carve-out 512.00 MiB" in mem.source and "ttm.pages_limit=26214400" in mem.source
    # never the carve-out alone: the kernel default (half the RAM) still counts GTT
    default = memory_from_facts(mem_total=64 * GiB - GiB // 2, carveout=GiB // 2, ttm_pages=None)
    assert default.usable_bytes == GiB // 2 + (64 * GiB - GiB // 2) // 2


def test_cpu_only_node_registers_ram_minus_os_reserve_and_refuses_none() -> None:
    mem = memory_from_facts(mem_total=24 * GiB, carveout=None, ttm_pages=None)
    assert mem.usable_bytes == 16 * GiB and mem.mib == 16 * 1024
    with pytest.raises(ConfigError, match="no usable memory"):
        memory_from_facts(mem_total=6 * GiB, carveout=None, ttm_pages=None)
    with pytest.raises(ConfigError, match="--gpu-memory"):
        detect_memory(1024)
    assert detect_memory(3 * GiB).mib == 3072


def test_spread_puts_replicas_on_distinct_nodes_then_the_most_free() -> None:
    nodes = rooms(a=4000, b=3000, c=2000)
    assert place(nodes, "m", [1000], 3) == [["a"], ["b"], ["c"]]
    assert place(nodes, "m", [1000], 1) == [["a"]]  # all hold one: the most free (a: 3000 left)
    assert [n.used_mib for n in nodes] == [2000, 1000, 1000]


def test_pack_fills_the_fullest_node_that_fits() -> None:
    nodes = rooms(a=4000, b=2500)
    assert place(nodes, "m", [1000], 3, "pack") == [["b"], ["b"], ["a"]]


def test_a_split_replica_needs_distinct_nodes() -> None:
    nodes = rooms(a=2000, b=2000)
    assert place(nodes, "big", [1500, 1500], 1) == [["a", "b"]]
    with pytest.raises(PlacementError, match=r"2 bundles of 1.46 GiB \+ 1.46 GiB on distinct nodes"):
        place(rooms(a=9000), "big", [1500, 1500], 1)


def test_refusal_names_the_need_and_every_nodes_free_memory_and_changes_nothing() -> None:
    nodes = rooms(head=2000, n2=2000)
    with pytest.raises(PlacementError) as err:
        place(nodes, "m", [1260], 3)
    assert err.value.message == (
        "m does not fit (2 of 3 placed): a replica needs 1.23 GiB; "
        "head 740.00 MiB free of 1.95 GiB, n2 740.00 MiB free of 1.95 GiB"
    )
    assert [n.used_mib for n in nodes] == [0, 0] and all(not n.replicas for n in nodes)


def test_candidates_limit_the_nodes() -> None:
    assert place(rooms(a=5000, b=1000), "m", [900], 1, candidates=["b"]) == [["b"]]


def test_backoff_doubles_up_to_thirty_seconds() -> None:
    assert [backoff(n) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]


def test_load_is_busy_slots_plus_queue() -> None:
    text = "# HELP x\nhalo_slots_busy 2.0\nhalo_queue_depth 3.0\nhalo_slots_total 4.0\n"
    assert _load_from_metrics(text) == 5.0
    assert _load_from_metrics("nothing here\n") is None


def test_serve_command_carries_the_planned_settings() -> None:
    dep = Deployment(
        name="smol", source="/m.gguf", path="/m.gguf", node_paths={"n2": "/srv/m.gguf"}, ctx=2048,
        parallel=2, serve_args=["--threads", "2"],
    )  # fmt: skip
    cmd = dep.serve_command("n2", "10.0.0.2", 9000, rpc=["10.0.0.3:50052"])
    assert cmd[:3] == ["serve", "--model", "/srv/m.gguf"]
    joined = " ".join(cmd)
    for part in ("--alias smol", "--host 10.0.0.2", "--port 9000", "--ctx-size 2048", "--parallel 2",
                 "--rpc 10.0.0.3:50052", "--threads 2"):  # fmt: skip
        assert part in joined


def test_ray_command_registers_memory_and_the_node_name() -> None:
    opts = NodeOptions(name="n2", state_dir=Path("/tmp/x"), memory=memory_from_facts(24 * GiB, None, None))
    opts.num_cpus = 2
    cmd = ray_command(opts)
    assert "--head" in cmd and '{"halo_gpu_mib":16384,"halo_node_n2":1000}' in cmd
    opts.address = "10.0.0.1:6379"
    cmd = ray_command(opts)
    assert "--head" not in cmd and cmd[cmd.index("--address") + 1] == "10.0.0.1:6379"


def test_head_addresses() -> None:
    assert split_address("10.0.0.1") == ("10.0.0.1", 6379)
    assert split_address("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ConfigError):
        split_address("host:port")


def test_a_missing_head_is_one_error_within_the_timeout() -> None:
    with pytest.raises(HaloError, match=r"no Ray head at 127.0.0.1:\d+ \(Connection refused"):
        check_reachable(f"127.0.0.1:{free_port()}", timeout=2)


def test_deploy_spec_file_becomes_deployments(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "nodes:\n"
        "  - {name: head, address: 10.0.0.1, ram: 128, models_dir: /srv/models}\n"
        "  - {name: n2, address: 10.0.0.2, ram: 128, models_dir: /data}\n"
        "models:\n"
        "  - {name: qwen3-8b, source: qwen3-8b, quant: Q4_K_M, file: q.gguf, nodes: [head, n2], ctx: 8192,\n"
        "     parallel: 2}\n"
    )
    (dep,) = from_deploy_spec(str(spec))
    assert dep.replicas == 2 and dep.candidates == ["head", "n2"] and dep.ctx == 8192
    assert dep.path_on("n2") == "/data/q.gguf" and dep.path_on("head") == "/srv/models/q.gguf"


def test_without_ray_the_command_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["cluster", "status"]) == 2
    err = capsys.readouterr().err
    assert err == "halo cluster: error: Ray is not installed: pip install 'haloserve[cluster]'\n"


@pytest.mark.slow  # imports Ray
def test_joining_a_head_that_is_not_there_is_one_line_and_quick(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    args = ["cluster", "join", f"127.0.0.1:{free_port()}", "--timeout", "2", "--state-dir", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("halo cluster: error: no Ray head at 127.0.0.1:")
    assert time.monotonic() - began < 60  # no hang: the probe gives up after 2 s
    assert not (tmp_path / "node.json").exists()


@pytest.mark.slow  # imports Ray
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--split", "rpc"], "--split rpc needs --nodes 2 or more"),
        (["--nodes", "2"], "--nodes needs --split rpc"),
        (
            ["--serve-args", "--port 9000"],
            "--serve-args: --port is set by halo cluster deploy (use its own flag)",
        ),
        (["--replicas", "0"], "--replicas must be at least 1 (halo cluster remove stops a deployment)"),
    ],
)
def test_deploy_refuses_bad_flags_before_touching_the_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["cluster", "deploy", "m.gguf", *flags, "--state-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"halo cluster: error: {message}\n"


@pytest.mark.process
def test_ray_processes_of_another_cluster_are_never_taken_for_ours(tmp_path: Path) -> None:
    """The Ray processes one ``ray start`` began are told apart by the environment they inherit, so
    a cluster starting on the same machine at the same moment is not recorded (and later killed) as ours."""
    import subprocess

    from haloserve.cluster import procs

    fake_ray = tmp_path / "site-packages" / "ray" / "fake.py"
    fake_ray.parent.mkdir(parents=True)
    fake_ray.write_text("import time\ntime.sleep(60)\n")
    started = []
    try:
        for state in ("ours", "theirs"):
            env = {**os.environ, "HALO_CLUSTER_DIR": str(tmp_path / state)}
            started.append(subprocess.Popen([sys.executable, str(fake_ray)], env=env))
        mine = procs.ray_pids(f"HALO_CLUSTER_DIR={tmp_path / 'ours'}")
        assert started[0].pid in mine and started[1].pid not in mine
        assert {p.pid for p in started} <= procs.ray_pids()
    finally:
        for p in started:
            p.kill()
            p.wait()
