"""``halo serve --rpc`` over two real ``halo rpc-worker`` processes on loopback, with the bundled model:
the same greedy answers as one process, layers on both workers, batching across them, and a worker
killed mid-stream: a clean error, 503 with Retry-After meanwhile (the gateway sees it down), and a reload
by itself once the worker is back (with the tensor cache: fewer bytes sent)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from haloserve.config.gateway import GatewaySettings
from haloserve.testing.gateway import ThreadedGateway, gateway_in_thread
from haloserve.testing.remote import RemoteServer, free_port
from tests.rpc.conftest import HaloProcess

pytestmark = [pytest.mark.model, pytest.mark.process]

SERVE = ["--parallel", "8", "--ctx-size", "4096", "--threads", "1"]
PROMPTS = ["What is the capital of France?", "Name three colours."]  # chat
TEXTS = ["The capital of France is", "Three colours are"]  # completions


class Worker:
    """A ``halo rpc-worker`` on a fixed port with its tensor cache (restartable on the same port)."""

    def __init__(self, cache: Path) -> None:
        self.port = free_port()
        self.cache = cache
        self.proc: HaloProcess | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> Worker:
        """Start it and wait until it listens."""
        self.proc = HaloProcess(
            ["rpc-worker", "--port", str(self.port), "--cache", str(self.cache), "--threads", "1"]
        )
        self.proc.wait_for("listening on", timeout=120)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(30)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    """Two workers, each with its own tensor cache."""
    ws = [Worker(tmp_path_factory.mktemp(f"cache{i}")).start() for i in range(2)]
    yield ws
    for w in ws:
        if w.proc is not None:
            w.proc.kill()


@pytest.fixture(scope="module")
def rpc_server(model_path: Path, workers: list[Worker]) -> Iterator[RemoteServer]:
    """``halo serve --rpc`` over both workers."""
    rpc = ",".join(w.endpoint for w in workers)
    with RemoteServer(["--model", str(model_path), "--rpc", rpc, *SERVE], ready_timeout=240) as srv:
        yield srv


@pytest.fixture(scope="module")
def answers(rpc_server: RemoteServer, model_path: Path) -> dict[str, list[Any]]:
    """The greedy answers of the RPC server and of one `halo serve` process with the same settings."""
    out = {"rpc": ask(rpc_server)}
    with RemoteServer(["--model", str(model_path), *SERVE], ready_timeout=240) as single:
        out["single"] = ask(single)
    return out


def ask(srv: RemoteServer) -> list[Any]:
    """Chat and completions, streamed and not, greedy."""
    client = srv.client(timeout=120)
    out: list[Any] = []
    for prompt, text in zip(PROMPTS, TEXTS, strict=True):
        msgs = [{"role": "user", "content": prompt}]
        chat = client.chat.completions.create(model="", messages=msgs, max_tokens=12, temperature=0)
        out.append(chat.choices[0].message.content)
        stream = client.chat.completions.create(
            model="", messages=msgs, max_tokens=12, temperature=0, stream=True
        )
        out.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        comp = client.completions.create(model="", prompt=text, max_tokens=12, temperature=0)
        out.append(comp.choices[0].text)
        stream = client.completions.create(model="", prompt=text, max_tokens=12, temperature=0, stream=True)
        out.append("".join(c.choices[0].text for c in stream))
    return out


def test_greedy_answers_are_those_of_one_process(answers: dict[str, list[Any]]) -> None:
    assert answers["rpc"] == answers["single"]
    rpc = answers["rpc"]
    assert all(rpc) and rpc[0::2] == rpc[1::2]  # and streamed == not streamed


def test_startup_props_and_health_show_layers_on_both_workers(
    rpc_server: RemoteServer, workers: list[Worker]
) -> None:
    banner = rpc_server.log_path.read_text()
    usage = httpx.get(rpc_server.url + "/props", timeout=30).json()["backend"]["device_usage"]
    health = httpx.get(rpc_server.url + "/health", timeout=30).json()["devices"]
    n_layers = 0
    for w in workers:
        line = re.search(rf"device (RPC\d) \[RPC\] \({re.escape(w.endpoint)}\): (\d+) layers", banner)
        assert line, banner
        dev = next(d for d in usage if d["description"] == w.endpoint)
        assert dev["name"] == line.group(1) and dev["layers"] == int(line.group(2)) > 0
        assert dev["weights_bytes"] > 0 and dev["memory_total"] > 0
        assert next(d for d in health if d["description"] == w.endpoint)["layers"] == dev["layers"]
        n_layers += dev["layers"]
    assert n_layers == 31  # SmolLM2-135M: 30 repeating layers and the output layer, all on the workers


def test_structured_output_and_tools_cross_to_the_engine_process(rpc_server: RemoteServer) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    chat = rpc_server.client(timeout=120).chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert isinstance(json.loads(chat.choices[0].message.content or "")["city"], str)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    chat = rpc_server.client(timeout=120).chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        max_tokens=60,
        temperature=0,
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
    )
    calls = chat.choices[0].message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)  # type: ignore[union-attr]


def test_eight_concurrent_streams_complete(rpc_server: RemoteServer) -> None:
    client = rpc_server.client(timeout=180)
    results: list[Any] = [None] * 8

    def run(i: int) -> None:
        stream = client.completions.create(
            model="",
            prompt=f"Story {i}:",
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = list(stream)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        results[i] = (finish, chunks[-1].usage.completion_tokens if chunks[-1].usage else None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert results == [(["length"], 16)] * 8
    assert rpc_server.metric("halo_engine_max_sequences_per_step") > 1  # batched, across both workers


@pytest.fixture(scope="module")
def gateway(rpc_server: RemoteServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedGateway]:
    """A gateway in front of the RPC server, probing it every half second."""
    settings = GatewaySettings(  # type: ignore[call-arg]
        port=0,
        backends=[rpc_server.url],
        keys_db=tmp_path_factory.mktemp("gw") / "gateway.db",
        health_interval=0.5,
        health_timeout=5.0,
        access_log=False,
    )
    with gateway_in_thread(settings) as gw:
        yield gw


def backend_healthy(gw: ThreadedGateway) -> bool:
    """The gateway's verdict on its one backend."""
    return bool(httpx.get(gw.url + "/health", timeout=10).json()["backends"][0]["healthy"])


def wait_until(cond: Any, timeout: float, what: str) -> float:
    """Seconds until ``cond()`` held (fails after ``timeout``)."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - t0


def test_a_worker_killed_mid_stream_is_a_clean_error_then_a_reload(
    rpc_server: RemoteServer, workers: list[Worker], gateway: ThreadedGateway
) -> None:
    wait_until(lambda: backend_healthy(gateway), 60, "the gateway to see the backend")
    first_load = httpx.get(rpc_server.url + "/props", timeout=30).json()["load"]
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 480,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    events: list[str] = []
    with httpx.stream("POST", rpc_server.base_url + "/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
                break  # it is streaming
        workers[1].kill()
        t0 = time.monotonic()
        events += [line[6:] for line in lines if line.startswith("data: ")]
        took = time.monotonic() - t0
    errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
    assert len(errors) == 1 and workers[1].endpoint in errors[0]["message"], events[-3:]
    assert took < 30
    health = httpx.get(rpc_server.url + "/health", timeout=30)
    assert health.status_code == 503 and workers[1].endpoint in health.json()["error"]["message"]
    new = httpx.post(rpc_server.base_url + "/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
    assert new.status_code == 503 and float(new.headers["retry-after"]) > 0
    assert new.json()["error"]["type"] == "service_unavailable"
    wait_until(lambda: not backend_healthy(gateway), 30, "the gateway to mark the backend down")
    workers[1].start()  # same port, same tensor cache
    reload = wait_until(
        lambda: httpx.get(rpc_server.url + "/health", timeout=30).status_code == 200, 180, "reload"
    )
    second_load = httpx.get(rpc_server.url + "/props", timeout=30).json()["load"]
    assert second_load["restarts"] == 1
    # the workers' tensor cache: the big tensors are named by hash instead of sent again
    assert 0 < second_load["bytes_sent"] < first_load["bytes_sent"], (first_load, second_load, reload)
    out = rpc_server.client(timeout=120).completions.create(
        model="", prompt=TEXTS[0], max_tokens=12, temperature=0
    )
    assert out.choices[0].text
    wait_until(lambda: backend_healthy(gateway), 30, "the gateway to take the backend back")


def test_an_unreachable_worker_is_one_line_and_exit_2(model_path: Path) -> None:
    port = free_port()
    proc = HaloProcess(["serve", "--model", str(model_path), "--rpc", f"127.0.0.1:{port}", "--port", "0"])
    code = proc.finish(120)
    assert code == 2 and "Traceback" not in "\n".join(proc.err)
    assert len(proc.err) == 1 and f"127.0.0.1:{port}" in proc.err[0] and "connection refused" in proc.err[0]


def test_sigterm_stops_the_server_and_its_engine_process(rpc_server: RemoteServer) -> None:
    assert rpc_server.proc is not None
    pid = rpc_server.proc.pid
    engines = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _child_of(p.parent, pid)]
    assert any(b"haloserve.engine.child" in p.read_bytes() for p in engines)
    assert rpc_server.stop() == 0
    for p in engines:
        assert not p.parent.exists() or b"haloserve.engine.child" not in p.read_bytes()


def _child_of(proc: Path, ppid: int) -> bool:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid
    except (OSError, IndexError, ValueError):
        return False
