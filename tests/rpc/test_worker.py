"""`halo rpc-worker` as a real process: what it prints, that a client's HELLO gets through, how it stops,
and how it supervises a ggml-rpc-server binary (a stand-in that records what it was given)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from haloserve.engine.rpc import probe
from haloserve.engine.rpc_worker import CVES, local_ipv4_addresses
from tests.rpc.conftest import HaloProcess

pytestmark = pytest.mark.process
Halo = Callable[..., HaloProcess]


def test_worker_exposes_its_device_answers_hello_and_stops_on_sigterm(
    halo: Halo, port: int, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "rpc"
    w = halo("rpc-worker", "--port", str(port), "--cache", str(cache), "--threads", "1")
    line = w.wait_for("halo serve --rpc")
    assert line.strip() == f"halo serve --rpc 127.0.0.1:{port} --model MODEL.gguf"
    head = w.wait_for("halo rpc-worker: listening on")
    assert f"127.0.0.1:{port}" in head and f"tensor cache: {cache}" in head
    assert any(row.split()[0] == "CPU" and row.endswith("GiB") for row in w.out), w.out  # device, memory
    assert cache.is_dir()  # created for ggml
    r = probe(f"127.0.0.1:{port}", timeout=20)
    assert r.ok, r.reason
    assert len(r.devices) == 1 and 0 < r.devices[0][0] <= r.devices[0][1]
    w.proc.send_signal(signal.SIGTERM)
    assert w.finish(timeout=20) == 0
    assert w.out[-1] == "halo rpc-worker: stopped (SIGTERM)"
    assert not any("Traceback" in e for e in w.err), w.err
    assert probe(f"127.0.0.1:{port}", timeout=5).status == "unreachable"  # the port is free again


def test_busy_port_is_one_line_and_exit_2(halo: Halo) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        w = halo("rpc-worker", "--port", str(taken))
        assert w.finish() == 2
    assert w.err == [f"halo rpc-worker: error: port {taken} on 127.0.0.1 is in use (another rpc-worker?): "
                     "stop it or pick --port"]
    assert w.out == []


@pytest.mark.parametrize("exit_code", [0, 7])
def test_binary_gets_our_flags_and_signals_and_its_status_is_ours(
    halo: Halo, standin: Path, port: int, tmp_path: Path, exit_code: int
) -> None:
    record = tmp_path / "record.json"
    env = {"STANDIN_RECORD": str(record), "STANDIN_EXIT": str(exit_code)}
    w = halo(
        "rpc-worker", "--binary", str(standin), "--port", str(port), "--threads", "3",
        "--device", "ROCm0,ROCm1", "--cache", str(tmp_path / "c"), env=env,
    )
    w.wait_for("stand-in: serving")  # its output passes through
    assert w.wait_for("halo serve --rpc").strip() == f"halo serve --rpc 127.0.0.1:{port} --model MODEL.gguf"
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["-H", "127.0.0.1", "-p", str(port), "-t", "3", "-d", "ROCm0,ROCm1", "-c"]
    assert seen["llama_cache"] == str(tmp_path / "c")  # rpc-server keeps its cache in $LLAMA_CACHE/rpc
    w.proc.send_signal(signal.SIGTERM)
    assert w.finish() == exit_code
    assert "stand-in: got SIGTERM" in w.wait_for("stand-in: got")  # forwarded, not a kill
    if exit_code:
        assert w.err[-1] == f"halo rpc-worker: ggml-rpc-server exited with status {exit_code}"
    else:
        assert w.out[-1] == "halo rpc-worker: stopped (SIGTERM)"


def test_routable_host_warns_naming_the_risk(halo: Halo, standin: Path, port: int, tmp_path: Path) -> None:
    # the stand-in listens nowhere: nothing is exposed while the warning is checked
    env = {"STANDIN_RECORD": str(tmp_path / "record.json")}
    w = halo("rpc-worker", "--binary", str(standin), "--host", "0.0.0.0", "--port", str(port), env=env)
    warning = w.wait_for("WARNING")
    assert warning.startswith("halo rpc-worker: WARNING: listening on 0.0.0.0: ")
    for needle in (*CVES, "no authentication", "RDMA/RoCE", "firewall"):
        assert needle in warning
    w.wait_for("stand-in: serving")
    assert json.loads((tmp_path / "record.json").read_text())["argv"][:2] == ["-H", "0.0.0.0"]
    # the line to paste names an address a client can reach, never 0.0.0.0
    lines = [line.split() for line in w.out if "halo serve --rpc" in line]
    hosts = {parts[3].rpartition(":")[0] for parts in lines}
    assert lines and hosts <= {*local_ipv4_addresses(), "127.0.0.1"} and "0.0.0.0" not in hosts
    assert {parts[3].rpartition(":")[2] for parts in lines} == {str(port)}
    w.proc.send_signal(signal.SIGINT)
    assert w.finish() == 0
    assert w.out[-1] == "halo rpc-worker: stopped (SIGINT)"


def test_missing_binary_is_one_line(halo: Halo, port: int) -> None:
    w = halo("rpc-worker", "--binary", "no-such-rpc-server-here", "--port", str(port))
    assert w.finish() == 2
    assert w.err == ["halo rpc-worker: error: --binary no-such-rpc-server-here: no such executable "
                     "(give ggml-rpc-server or rpc-server)"]


CLIENT = """
import sys
from haloserve.engine.devices import list_devices
from haloserve.engine.rpc import parse_endpoint, probe, rpc_api
ep = parse_endpoint(sys.argv[1])
assert probe(ep, 20).ok
api = rpc_api()
names = api.add_server(ep)
free, total = api.device_memory(ep, 0)
rpc = [d for d in list_devices() if d.name in names]
print(api.flavour, names, free > 0 and free <= total, [(d.backend, d.description, d.type) for d in rpc])
"""


def test_ggml_client_registers_the_workers_devices(halo: Halo, port: int) -> None:
    # through the bindings `halo serve --rpc` uses, in a child: ggml aborts its process on any RPC failure
    w = halo("rpc-worker", "--port", str(port), "--threads", "1")
    w.wait_for("halo serve --rpc")
    client = subprocess.run(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout.split("\n")[0] == (
        f"server ['RPC0'] True [('RPC', '127.0.0.1:{port}', 'gpu')]"
    )
    w.proc.send_signal(signal.SIGTERM)
    assert w.finish() == 0


RACE = """
import sys
import haloserve.engine.rpc_worker as w
w.check_port = lambda host, port: None  # as if another process took the port right after the check
from haloserve.cli import main
sys.exit(main(["rpc-worker", "--port", sys.argv[1], "--threads", "1"]))
"""


def test_ggml_failing_to_listen_is_one_error_line_not_a_hang(port: int) -> None:
    with socket.create_server(("127.0.0.1", port)):
        run = subprocess.Popen(
            [sys.executable, "-c", RACE, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        out, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert f"halo rpc-worker: error: ggml's RPC server did not start on 127.0.0.1:{port}" in err.splitlines()
    assert "listening on" not in out and "halo serve --rpc" not in out  # nothing claims it serves
