"""A real three-node Ray cluster on this machine, started and stopped with the ``halo cluster`` CLI.

Three raylets (``halo cluster start`` + two ``halo cluster join``), each with its own state directory and
1.46 GiB of registered memory, so that the bundled model at 2048 context and 2 slots (1.23 GiB per
replica, ``halo plan``'s number) fits once per node: placement is decided by the memory resource. Ray's
ports are private to the fixture (a free GCS port), and teardown stops exactly the processes the CLI
recorded, never another Ray on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from haloserve.testing.remote import free_port

NODE_MEMORY = "1500MiB"
NODES = ("head", "n2", "n3")


@dataclass
class Cluster:
    """The running test cluster and helpers to drive it through the CLI."""

    root: Path
    port: int
    gateway_port: int
    model: Path

    def dir(self, node: str) -> Path:
        """The state directory of ``node``."""
        return self.root / node

    def halo(self, *args: str, node: str = "head", timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """``halo cluster ARGS --state-dir <node's>``."""
        cmd = [sys.executable, "-m", "haloserve", "cluster", *args, "--state-dir", str(self.dir(node))]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())

    def status_cli(self) -> dict[str, Any]:
        """``halo cluster status --json``."""
        out = self.halo("status", "--json")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def status(self) -> dict[str, Any]:
        """The controller's status, asked from this process (a Ray driver: polling through the CLI would
        cost seconds per look on a loaded machine)."""
        from haloserve.cluster import client

        client.connect(f"127.0.0.1:{self.port}")
        return dict(client.call(client.controller().status))

    def disconnect(self) -> None:
        """Leave Ray before it goes away (a driver whose head is gone exits its process)."""
        import ray

        ray.shutdown()

    def replicas(self, name: str) -> list[dict[str, Any]]:
        """The replicas of deployment ``name`` as status reports them."""
        deps = [d for d in self.status()["deployments"] if d["name"] == name]
        return deps[0]["replica_list"] if deps else []

    def gateway_backends(self) -> dict[str, bool]:
        """URL -> healthy, as the gateway's ``/health`` lists its backends."""
        body = httpx.get(f"{self.gateway}/health", timeout=10).json()
        return {b["url"]: bool(b["healthy"]) for b in body.get("backends", [])}

    def backends(self) -> list[dict[str, Any]]:
        """The gateway's backends file as the controller wrote it."""
        return list(json.loads((self.dir("head") / "backends.json").read_text())["backends"])

    @property
    def gateway(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.gateway_port}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 1.0) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=5)
    except httpx.TransportError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Cluster]:
    """Head + two workers; everything the CLI started is stopped at the end, node by node."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), free_port(), free_port(), model_path)
    started: list[str] = []
    try:
        out = c.halo(
            "start", "--name", "head", "--gpu-memory", NODE_MEMORY, "--num-cpus", "1", "--port", str(c.port),
            "--gateway-port", str(c.gateway_port),
        )  # fmt: skip
        started.append("head")
        assert out.returncode == 0, out.stdout + out.stderr
        for node in NODES[1:]:
            out = c.halo(
                "join", f"127.0.0.1:{c.port}", "--name", node, "--gpu-memory", NODE_MEMORY, "--num-cpus", "1",
                node=node,
            )  # fmt: skip
            started.append(node)
            assert out.returncode == 0, out.stdout + out.stderr
        wait_for(lambda: _answers(c.gateway), 60, "the gateway to answer")
        yield c
    finally:
        c.disconnect()
        for node in reversed(started):
            c.halo("stop", node=node, timeout=120)
