"""Real `halo serve` processes on loopback with the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from haloserve.bundled import BUNDLED_ALIAS, bundled_model_path
from haloserve.testing.remote import RemoteServer


@pytest.fixture(scope="session")
def server(model_path: Path) -> Iterator[RemoteServer]:
    """One shared server: the bundled model under its usual name, 16 slots x 1024 tokens, two threads."""
    args = ["--model", str(model_path), "--alias", BUNDLED_ALIAS]
    args += ["--parallel", "16", "--ctx-size", "16384", "--threads", "2"]
    with RemoteServer(args) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server: RemoteServer):  # type: ignore[no-untyped-def]
    """The official openai client pointed at the shared server."""
    return server.client()


def halo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m haloserve ARGS`` to the end, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "haloserve", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def plan_env(*args: str) -> dict[str, str]:
    """`halo plan --json` for the bundled model: the LLAMA_ARG_* it prints for llama-server / halo serve."""
    r = halo("plan", str(bundled_model_path()), "--json", *args)
    assert r.returncode == 0, r.stderr
    env: dict[str, str] = json.loads(r.stdout)["llama_server_env"]
    return env
