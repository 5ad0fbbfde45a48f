"""Many models with real llama.cpp engines: the bundled model and two synthetic ones under a budget that
holds two; eviction, pinning, ttl, streams while another model loads, a broken file, shared loads."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from haloserve.cli.serve_models import build_models_app
from haloserve.config.serve import ServeSettings
from haloserve.server.model_memory import planned_bytes
from haloserve.testing.inproc import InProcessServer

pytestmark = pytest.mark.model

COMMON: dict[str, Any] = {"parallel": 2, "ctx_size": 1024, "threads": 1, "poll": 0, "log_level": "warning"}
MODELS = ("smol", "tiny-a", "tiny-b")


def budget_for_two(root: Path) -> int:
    """Bytes that hold the two largest of the three models, and so any two, but never all three."""
    settings = ServeSettings(**COMMON)
    sizes = sorted(planned_bytes(root / f"{name}.gguf", settings) for name in MODELS)
    assert sizes[0] + sizes[1] + sizes[2] > sizes[1] + sizes[2] + (1 << 20)
    return sizes[1] + sizes[2] + (1 << 20)


def warn(line: str) -> None:
    print(line, file=sys.stderr)


def statuses(url: str) -> dict[str, str]:
    data = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    return {c["id"]: c["status"]["value"] for c in data}


def ask(client: OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
    )
    assert reply.model == model and reply.usage is not None and reply.usage.completion_tokens >= 1
    return reply.model


@pytest.fixture(scope="module")
def served_dir(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    root = tmp_path_factory.mktemp("dir")
    for name in MODELS:
        (root / f"{name}.gguf").symlink_to((synth_dir / f"{name}.gguf").resolve())
    whole = (synth_dir / "tiny-a.gguf").read_bytes()
    (root / "broken.gguf").write_bytes(whole[: len(whole) // 2])  # a download cut short
    settings = ServeSettings(models_dir=root, memory_budget=budget_for_two(root), **COMMON)
    with InProcessServer(build_models_app(settings, warn), timeout=120) as srv:
        yield srv


def test_each_request_loads_its_model_and_evicts_the_least_recently_used(served_dir: InProcessServer) -> None:
    client = OpenAI(base_url=served_dir.url + "/v1", api_key="none", max_retries=0, timeout=120)
    for name in MODELS:
        ask(client, name)
    assert statuses(served_dir.url) == {
        "smol": "unloaded",
        "tiny-a": "loaded",
        "tiny-b": "loaded",
        "broken": "failed",
    }
    ask(client, "tiny-a")
    ask(client, "smol")  # tiny-b is now the least recently used
    assert statuses(served_dir.url)["tiny-b"] == "unloaded"
    used = httpx.get(served_dir.url + "/metrics", timeout=30).text
    line = next(ln for ln in used.splitlines() if ln.startswith("halo_models_used_bytes "))
    budget = next(ln for ln in used.splitlines() if ln.startswith("halo_models_budget_bytes "))
    assert 0 < float(line.split()[1]) <= float(budget.split()[1])


def test_a_broken_gguf_fails_only_its_own_requests(served_dir: InProcessServer) -> None:
    r = httpx.post(
        served_dir.url + "/v1/chat/completions",
        json={"model": "broken", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
    message = r.json()["error"]["message"]
    assert "'broken'" in message and "past the end of the file" in message
    client = OpenAI(base_url=served_dir.url + "/v1", api_key="none", max_retries=0, timeout=120)
    ask(client, "tiny-a")  # the others keep serving
    assert httpx.get(served_dir.url + "/health", timeout=30).status_code == 200


def test_concurrent_requests_share_one_load(served_dir: InProcessServer) -> None:
    url = served_dir.url
    if statuses(url)["tiny-b"] == "loaded":
        assert httpx.post(url + "/models/unload", json={"model": "tiny-b"}, timeout=60).json() == {
            "success": True
        }

    def loads() -> float:
        text = httpx.get(url + "/metrics", timeout=30).text
        line = 'halo_model_loads_total{model="tiny-b"}'
        return float(next(ln for ln in text.splitlines() if ln.startswith(line)).split()[1])

    before = loads()

    async def many() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as http:
            body = {"model": "tiny-b", "prompt": "1, 2,", "max_tokens": 2}
            replies = await asyncio.gather(*(http.post(url + "/v1/completions", json=body) for _ in range(4)))
        return [r.status_code for r in replies]

    assert asyncio.run(many()) == [200] * 4
    assert loads() == before + 1


def test_streams_of_one_model_flow_while_another_loads(served_dir: InProcessServer) -> None:
    url = served_dir.url
    for name, status in statuses(url).items():
        if status == "loaded" and name != "tiny-a":
            httpx.post(url + "/models/unload", json={"model": name}, timeout=60)
    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    ask(client, "tiny-a")
    arrivals: list[float] = []
    window: list[float] = []

    def load_smol() -> None:
        window.append(time.monotonic())
        r = httpx.post(url + "/models/load", json={"model": "smol"}, timeout=120)
        window.append(time.monotonic())
        assert r.json() == {"success": True}

    stream = client.completions.create(
        model="tiny-a", prompt="Once", max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    loader = threading.Thread(target=load_smol)
    for i, _chunk in enumerate(stream):
        arrivals.append(time.monotonic())
        if i == 20:
            loader.start()
    loader.join(120)
    start, end = window
    during = [t for t in arrivals if start <= t <= end]
    gaps = [b - a for a, b in itertools.pairwise(arrivals) if start <= b <= end]
    longest = max(gaps, default=0.0)
    load = end - start
    print(f"\nload of smol {load:.2f}s: {len(during)} tokens of tiny-a meanwhile, longest gap {longest:.3f}s")
    assert statuses(url)["smol"] == "loaded"
    # The stream went on during the load: tokens kept coming, and no gap took most of the load's time.
    assert len(during) >= 3 and longest < max(1.0, 0.8 * load)


PINNED_YAML = """\
models:
  - id: smol
    path: smol.gguf
    aliases: [smollm2]
    pinned: true
  - id: tiny-a
    path: tiny-a.gguf
  - id: tiny-b
    path: tiny-b.gguf
    ttl: 1
"""


def test_pinned_model_stays_and_ttl_unloads(synth_dir: Path, tmp_path: Path) -> None:
    for name in MODELS:
        (tmp_path / f"{name}.gguf").symlink_to((synth_dir / f"{name}.gguf").resolve())
    (tmp_path / "models.yaml").write_text(PINNED_YAML)
    settings = ServeSettings(
        models=tmp_path / "models.yaml", memory_budget=budget_for_two(tmp_path), **COMMON
    )
    with InProcessServer(build_models_app(settings, warn), timeout=120) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=120)
        deadline = time.monotonic() + 60
        while statuses(srv.url)["smol"] != "loaded" and time.monotonic() < deadline:
            time.sleep(0.1)  # a pinned model is loaded at start
        for name in ("tiny-a", "tiny-b", "tiny-a"):
            ask(client, name)
            assert statuses(srv.url)["smol"] == "loaded"
        assert (
            client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            ).model
            == "smol"
        )
        ask(client, "tiny-b")
        deadline = time.monotonic() + 30
        while statuses(srv.url)["tiny-b"] == "loaded" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert statuses(srv.url) == {"smol": "loaded", "tiny-a": "unloaded", "tiny-b": "unloaded"}


@pytest.mark.process
def test_a_budget_smaller_than_any_model_is_a_start_up_error(synth_dir: Path) -> None:
    halo = shutil.which("halo", path=str(Path(sys.executable).parent)) or "halo"
    proc = subprocess.run(
        [halo, "serve", "--models-dir", str(synth_dir), "--memory-budget", "10M", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("halo serve: error: --memory-budget 10.00 MiB is smaller than any model")
    assert "needs" in last and "Traceback" not in proc.stderr
