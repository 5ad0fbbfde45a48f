"""`halo rpc-worker`'s decisions without a server: devices, errors before anything starts, the flags a
supervised rpc-server gets, and the exposure warning."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from haloserve.cli import main
from haloserve.config import load_settings
from haloserve.config.rpc_worker import RpcWorkerSettings
from haloserve.config.serve_env import env_warnings
from haloserve.engine import rpc
from haloserve.engine.devices import Device
from haloserve.engine.rpc_worker import (
    binary_command,
    exposure_warning,
    local_ipv4_addresses,
    select_devices,
    serve_line,
)
from haloserve.errors import ConfigError

CPU = Device("CPU", "AMD Ryzen AI Max+ 395", "cpu", "CPU", 128 << 30, 100 << 30)
GPU0 = Device("ROCm0", "AMD Radeon Graphics (gfx1151)", "igpu", "ROCm", 120 << 30, 110 << 30)
VK0 = Device("Vulkan0", "Radeon 8060S", "igpu", "Vulkan", 120 << 30, 110 << 30)
BLAS = Device("BLAS", "OpenBLAS", "accel", "BLAS", 0, 0)


def test_default_devices_are_the_gpus_else_the_cpu() -> None:
    assert select_devices([CPU, BLAS, GPU0, VK0], []) == [GPU0, VK0]
    assert select_devices([CPU, BLAS], []) == [CPU]
    assert select_devices([CPU, GPU0], ["CPU", "ROCm0", "CPU"]) == [CPU, GPU0]


def test_unknown_device_names_the_ones_there_are() -> None:
    with pytest.raises(ConfigError) as info:
        select_devices([CPU, GPU0], ["ROCm1"])
    assert info.value.message == (
        "--device ROCm1: no such ggml device; this build has: CPU (AMD Ryzen AI Max+ 395), "
        "ROCm0 (AMD Radeon Graphics (gfx1151))"
    )


def test_unknown_device_from_the_command_line(port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rpc-worker", "--port", str(port), "--device", "CPU,NoSuchGPU"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("halo rpc-worker: error: --device NoSuchGPU: no such ggml device; this build has: ")
    assert "CPU (" in err
    assert err.count("\n") == 1


def test_library_without_rpc_is_one_line_exit_1(
    port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rpc.rpc_api.cache_clear()
    monkeypatch.setattr(llama_cpp, "llama_supports_rpc", lambda: False)
    try:
        assert main(["rpc-worker", "--port", str(port)]) == 1
    finally:
        rpc.rpc_api.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("halo rpc-worker: error: this llama-cpp-python was built without ggml's RPC")
    assert "-DGGML_RPC=ON" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("flag", "value", "why"),
    [
        ("--host", "localhost", "IPv4 address only"),
        ("--host", "::1", "IPv4 address only"),
        ("--port", "0", "greater than or equal to 1"),
        ("--threads", "0", "greater than or equal to 1"),
    ],
)
def test_bad_flags_are_one_line_exit_2(
    flag: str, value: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rpc-worker", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"halo rpc-worker: error: {flag}: ") and why in err and err.count("\n") == 1


def test_foreign_address_is_refused_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    mine = set(local_ipv4_addresses())
    foreign = next(a for a in (f"203.0.113.{i}" for i in range(1, 255)) if a not in mine)  # TEST-NET-3
    assert main(["rpc-worker", "--host", foreign]) == 2
    err = capsys.readouterr().err
    assert err == f"halo rpc-worker: error: --host {foreign}: not an address of this machine\n"


def test_binary_flags_map_to_rpc_server(tmp_path: Path) -> None:
    exe = tmp_path / "rpc-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    s = load_settings(RpcWorkerSettings, flags={"binary": str(exe), "threads": 2}, env={})
    cmd = binary_command(s)
    assert cmd.argv == [str(exe), "-H", "127.0.0.1", "-p", "50052", "-t", "2"]
    assert cmd.env == {} and cmd.cache_dir is None
    env = {"HALO_RPC_WORKER_DEVICE": "Vulkan0, Vulkan1", "HALO_RPC_WORKER_CACHE": str(tmp_path / "c")}
    cmd = binary_command(load_settings(RpcWorkerSettings, flags={"binary": str(exe)}, env=env))
    assert cmd.argv[-3:] == ["-d", "Vulkan0,Vulkan1", "-c"]
    assert cmd.env == {"LLAMA_CACHE": str(tmp_path / "c")} and cmd.cache_dir == tmp_path / "c" / "rpc"
    exe.chmod(0o644)
    with pytest.raises(ConfigError, match="no such executable"):
        binary_command(s)


def test_halo_serve_env_does_not_move_the_worker() -> None:
    # HALO_HOST is halo serve's; an unauthenticated worker must not follow it onto 0.0.0.0
    s = load_settings(RpcWorkerSettings, env={"HALO_HOST": "0.0.0.0", "HALO_PORT": "8080"})
    assert (s.host, s.port) == ("127.0.0.1", 50052)
    # and halo serve, started from a shell that configures a worker too, does not warn about its variables
    assert env_warnings({"HALO_RPC_WORKER_PORT": "50053", "HALO_NOT_A_SETTING": "1"}) == [
        "HALO_NOT_A_SETTING is not a halo serve setting: ignored (see halo serve --help)"
    ]


def test_warning_only_off_loopback() -> None:
    assert exposure_warning("127.0.0.1") is None and exposure_warning("127.0.0.2") is None
    text = exposure_warning("10.0.0.2")
    assert text is not None and "CVE-2024-42479" in text and "firewall it to the main node" in text
    assert serve_line("10.0.0.2", 50052) == "halo serve --rpc 10.0.0.2:50052 --model MODEL.gguf"
