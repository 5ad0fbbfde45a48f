"""halo cluster end to end on a real three-node Ray cluster (see conftest.py) with the bundled model.

The tests run in order on one module-scoped cluster: deploy, refuse, kill and restart, fail a replica
whose model file is missing, scale, lose a node, read logs, and finally lose Ray altogether.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.cluster.conftest import Cluster, wait_for

pytestmark = [pytest.mark.model, pytest.mark.process]

DOCS = Path(__file__).parents[2] / "docs" / "cluster.md"
DEPLOY = ("--ctx-size", "2048", "--parallel", "2", "--serve-args", "--threads 1")


def ask(url: str, prompt: str = "Say hi", model: str = "smol") -> str:
    """One short chat completion from ``url`` (a halo serve replica or the gateway)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=60, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0
    )
    return reply.choices[0].message.content or ""


def ready(c: Cluster, name: str = "smol") -> list[dict]:
    return [r for r in c.replicas(name) if r["state"] == "ready"]


def test_every_node_registers_its_memory(cluster: Cluster) -> None:
    nodes = {n["name"]: n for n in cluster.status()["nodes"]}
    assert sorted(nodes) == ["head", "n2", "n3"]
    assert all(n["total_mib"] == 1500 and n["free_mib"] == 1500 for n in nodes.values())


def test_a_split_deployment_places_a_server_and_its_rpc_worker_on_two_nodes(cluster: Cluster) -> None:
    out = cluster.halo(
        "deploy", str(cluster.model), "--name", "split", "--split", "rpc", "--nodes", "2", *DEPLOY
    )
    status = cluster.status()
    (dep,) = status["deployments"]
    assert dep["need_mib"] == [1181, 1202]  # halo plan's shares of an even layer split
    (rep,) = dep["replica_list"]
    server_node, worker_node = rep["nodes"]
    assert server_node != worker_node
    used = {n["name"]: n["used_mib"] for n in status["nodes"]}
    assert used[server_node] == 1181 and used[worker_node] == 1202
    (worker,) = rep["workers"]
    assert worker["role"] == "rpc-worker" and worker["node"] == worker_node and worker["state"] == "ready"
    assert worker["url"].startswith("127.0.0.1:")  # halo rpc-worker listening, started before the server
    if rep["state"] == "ready":  # halo serve --rpc (branch rpcserve) serves the split model
        assert out.returncode == 0 and ask(rep["url"], model="split")
    else:  # without it halo serve refuses --rpc (exit 2): failed at once with the cause, no restarts
        assert out.returncode == 1 and rep["state"] == "failed" and rep["restarts"] == 0
        assert "serve exited with status 2" in rep["error"] and "--rpc" in rep["error"]
    removed = cluster.halo("remove", "split")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert all(n["used_mib"] == 0 for n in cluster.status()["nodes"])


def served(url: str) -> float:
    """Chat requests a replica has answered (its ``halo_requests_total`` counters)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("halo_requests_total{") and "chat" in line
    )


def test_two_replicas_spread_over_two_nodes_and_both_serve_through_the_gateway(cluster: Cluster) -> None:
    began = time.monotonic()
    out = cluster.halo("deploy", str(cluster.model), "--name", "smol", "--replicas", "2", *DEPLOY)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 replica(s) of 1260 MiB (halo plan:" in out.stdout
    print(f"deploy returned with 2 ready replicas after {time.monotonic() - began:.1f} s")
    reps = cluster.replicas("smol")
    assert [r["state"] for r in reps] == ["ready", "ready"]
    assert len({r["node"] for r in reps}) == 2  # spread: one per node
    urls = {r["url"] for r in reps}
    listed = {b["url"]: b for b in cluster.backends()}
    assert set(listed) == urls and all(b["models"] == ["smol"] for b in listed.values())
    wait_for(lambda: all(cluster.gateway_backends().get(u) for u in urls), 30, "the gateway to admit both")
    print(f"both in the gateway after {time.monotonic() - began:.1f} s")
    with ThreadPoolExecutor(4) as pool:  # distinct prompts, so the prefix policy spreads them
        replies = list(pool.map(lambda i: ask(cluster.gateway, f"Count to {i}"), range(8)))
    assert all(replies)
    assert all(served(u) > 0 for u in urls)  # both replicas answered some


def test_a_deployment_that_fits_nowhere_is_refused_with_the_numbers(cluster: Cluster) -> None:
    out = cluster.halo("deploy", str(cluster.model), "--name", "other", "--replicas", "2", *DEPLOY)
    assert out.returncode == 1
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith("halo cluster: error: other does not fit (1 of 2 placed)")
    assert (
        "a replica needs 1.23 GiB" in line and "240.00 MiB free of 1.46 GiB" in line and "halo plan:" in line
    )
    assert line in DOCS.read_text()  # the example in docs/cluster.md is this very message
    assert [d["name"] for d in cluster.status()["deployments"]] == ["smol"]  # nothing half-placed


def test_scaling_past_what_fits_is_refused(cluster: Cluster) -> None:
    out = cluster.halo("scale", "smol", "4")
    assert out.returncode == 1 and "smol does not fit (1 of 2 placed)" in out.stderr
    assert len(cluster.replicas("smol")) == 2


def test_a_replica_killed_under_load_is_restarted_and_readmitted(cluster: Cluster) -> None:
    victim = cluster.replicas("smol")[1]
    errors: list[str] = []
    answered = [0]
    done = threading.Event()

    def load() -> None:  # non-streamed requests through the gateway all along
        i = 0
        while not done.is_set():
            i += 1
            try:
                ask(cluster.gateway, f"Name a colour, {i}")
                answered[0] += 1
            except openai.OpenAIError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(2)
        os.kill(victim["pid"], signal.SIGKILL)
        began = time.monotonic()
        wait_for(lambda: not cluster.gateway_backends().get(victim["url"]), 30, "the gateway to eject it")

        def back() -> dict | None:
            now = {r["id"]: r for r in ready(cluster)}.get(victim["id"])
            return now if now and now["restarts"] == 1 else None

        now = wait_for(back, 90, "the replica to be restarted")
        wait_for(lambda: cluster.gateway_backends().get(now["url"]), 30, "the gateway to re-admit it")
        print(f"replica back in the gateway {time.monotonic() - began:.1f} s after SIGKILL")
    finally:
        done.set()
        for w in workers:
            w.join(timeout=120)
    assert errors == [] and answered[0] > 0
    assert now["pid"] != victim["pid"] and now["node"] == victim["node"]
    assert now["url"] == victim["url"]  # same port again: the gateway sees the same backend return


def test_a_model_file_missing_on_the_node_fails_with_the_cause(cluster: Cluster) -> None:
    missing = ("--node-path", "/nonexistent/ghost.gguf", "--on", "n3")
    out = cluster.halo("deploy", str(cluster.model), "--name", "ghost", *missing, *DEPLOY)
    assert out.returncode == 1
    assert "ghost-1 on n3: failed (model file not found on node n3: /nonexistent/ghost.gguf)" in out.stdout
    time.sleep(3)  # not restarted over and over
    (rep,) = cluster.replicas("ghost")
    assert rep["state"] == "failed" and rep["restarts"] == 0
    assert "ghost" not in json.dumps(cluster.backends())
    assert cluster.halo("remove", "ghost").returncode == 0


def test_scale_down_then_up(cluster: Cluster) -> None:
    before = cluster.replicas("smol")
    assert cluster.halo("scale", "smol", "1").returncode == 0
    assert [r["id"] for r in cluster.replicas("smol")] == [before[0]["id"]]
    wait_for(lambda: len(cluster.backends()) == 1, 10, "the backends file to drop the replica")
    wait_for(lambda: before[1]["url"] not in cluster.gateway_backends(), 10, "the gateway to drop it")
    with pytest.raises(httpx.TransportError):
        httpx.get(before[1]["url"] + "/health", timeout=5)  # its process is gone
    assert cluster.halo("scale", "smol", "2").returncode == 0
    wait_for(lambda: len(ready(cluster)) == 2, 120, "two ready replicas")
    assert len(cluster.backends()) == 2


def test_a_lost_node_has_its_replica_placed_on_another(cluster: Cluster) -> None:
    reps = cluster.replicas("smol")
    used = {r["node"] for r in reps}
    lost = next(n for n in ("n2", "n3") if n in used)
    spare = ({"head", "n2", "n3"} - used).pop()
    moved = next(r for r in reps if r["node"] == lost)
    assert cluster.halo("stop", node=lost).returncode == 0

    def replaced() -> dict | None:
        now = {r["id"]: r for r in ready(cluster)}.get(moved["id"])
        return now if now and now["node"] == spare else None

    now = wait_for(replaced, 150, f"{moved['id']} to move from {lost} to {spare}")
    assert now["restarts"] >= 1
    assert lost not in {n["name"] for n in cluster.status()["nodes"]}
    wait_for(lambda: cluster.gateway_backends().get(now["url"]), 30, "the gateway to admit the moved one")
    assert ask(cluster.gateway)


def test_status_json_matches_what_is_running(cluster: Cluster) -> None:
    data = cluster.status_cli()
    assert {n["name"] for n in data["nodes"]} == {n["name"] for n in cluster.status()["nodes"]}
    (dep,) = data["deployments"]
    assert dep["name"] == "smol" and dep["need_mib"] == [1260]
    used = {n["name"]: n["used_mib"] for n in data["nodes"]}
    for r in dep["replica_list"]:
        assert set(r) >= {"id", "node", "url", "state", "restarts", "load", "pid", "error"}
        assert r["state"] == "ready" and used[r["node"]] == 1260
        assert httpx.get(r["url"] + "/health", timeout=10).status_code == 200
        assert os.path.exists(f"/proc/{r['pid']}")


def test_logs_show_each_replicas_serve_log(cluster: Cluster) -> None:
    out = cluster.halo("logs", "smol", "-n", "200")
    assert out.returncode == 0
    for r in cluster.replicas("smol"):
        assert f"==> {r['id']} <==" in out.stdout
    assert "GET /health 200" in out.stdout


def test_replicas_keep_serving_when_ray_is_gone_and_a_new_head_adopts_them(cluster: Cluster) -> None:
    before = {r["id"]: r for r in ready(cluster)}
    assert len(before) == 2
    nodes = sorted({r["node"] for r in before.values()})
    cluster.disconnect()
    for node in ("head", "n2", "n3"):  # the head and every raylet die at once
        record = cluster.dir(node) / "node.json"
        if record.exists():
            for pid in json.loads(record.read_text())["ray_pids"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    time.sleep(5)  # actor workers notice their raylet is gone and exit
    for r in before.values():
        assert ask(r["url"])
    assert all(ask(cluster.gateway, f"Pick a number, {i}") for i in range(3))  # the gateway still routes

    # Ray comes back: the head starts again (its gateway is kept), the other node rejoins, and the new
    # controller re-creates each replica on its node, whose actor adopts the process still serving
    out = cluster.halo("start", "--name", "head", "--gpu-memory", "1500MiB", "--num-cpus", "1",
                       "--port", str(cluster.port), "--gateway-port", str(cluster.gateway_port))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kept running" in out.stdout
    for node in nodes:
        if node != "head":
            out = cluster.halo("join", f"127.0.0.1:{cluster.port}", "--name", node, "--gpu-memory", "1500MiB",
                               "--num-cpus", "1", node=node)  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
    after = wait_for(lambda: len(ready(cluster)) == 2 and ready(cluster), 120, "the replicas to be adopted")
    assert {r["id"]: (r["pid"], r["node"], r["url"]) for r in after} == {
        rid: (r["pid"], r["node"], r["url"]) for rid, r in before.items()
    }
    assert {b["url"] for b in cluster.backends()} == {r["url"] for r in after}
    assert ask(cluster.gateway)
