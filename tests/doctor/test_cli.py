"""``halo doctor`` on the command line: JSON, exit codes, one-line errors, and this real machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haloserve.cli import main
from haloserve.doctor import REGISTRY
from tests.doctor.conftest import FIXTURES

REQUIRED = {"id", "status", "observed", "expected", "fix"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_a_list_of_checks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--root", str(FIXTURES / "strix-halo-128"), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert [d["id"] for d in data] == list(REGISTRY)
    assert all(set(d) >= REQUIRED for d in data)
    assert {d["status"] for d in data} <= {"ok", "warn", "fail", "skip"}


@pytest.mark.parametrize(
    ("name", "code"), [("strix-halo-128", 0), ("igpu-dgpu", 0), ("seed-misconfigured", 1)]
)
def test_exit_codes(capsys: pytest.CaptureFixture[str], name: str, code: int) -> None:
    assert run(capsys, "--root", str(FIXTURES / name), "--json")[0] == code


def test_check_selection(capsys: pytest.CaptureFixture[str]) -> None:
    seed = str(FIXTURES / "seed-misconfigured")
    code, out, _ = run(capsys, "--root", seed, "--json", "--check", "kernel", "--check", "iommu")
    assert code == 0  # warnings only: the failing checks were not selected
    assert [d["id"] for d in json.loads(out)] == ["kernel", "iommu"]
    code, out, _ = run(capsys, "--root", seed, "--json", "--check", "memory")
    assert code == 1 and json.loads(out)[0]["status"] == "fail"
    code, out, _ = run(capsys, "--root", str(FIXTURES / "rdma-node"), "--json", "--check", "rdma")
    assert [d["id"] for d in json.loads(out)] == [c for c in REGISTRY if c.startswith("rdma")]


def test_check_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HALO_CHECK", "kernel,ttm")
    code, out, _ = run(capsys, "--root", str(FIXTURES / "strix-halo-64"), "--json")
    assert code == 1 and [d["id"] for d in json.loads(out)] == ["kernel", "ttm"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--check", "nope"], "halo doctor: error: --check: unknown check 'nope' (known: kernel, amdgpu,"),
        (["--root", "/nonexistent/tree"], "halo doctor: error: --root: no such directory or archive"),
        (["--bogus"], "halo: error: unrecognized arguments: --bogus"),  # reported by the top-level parser
        (["--snapshot", "/nonexistent/dir/s.tar.gz"], "halo doctor: error: --snapshot: directory"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "--root", str(FIXTURES / "non-amd"), *argv)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_not_an_archive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "x.tar.gz"
    bad.write_text("not a tar")
    code, _, err = run(capsys, "--root", str(bad))
    assert code == 2 and "neither a directory nor a tar archive" in err and err.count("\n") == 1


def test_human_report(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "140")
    code, out, err = run(capsys, "--root", str(FIXTURES / "seed-misconfigured"))
    assert code == 1 and err == ""
    for section in ("Kernel and driver", "GPU access", "Memory", "Software", "RDMA", "RPC workers", "Models"):
        assert section in out
    assert "rdma (6 checks)" in out  # six skipped RDMA checks fold into one row
    assert "✘ FAIL  memory: Memory split" in out
    # fixes print whole, unwrapped and unboxed, ready to paste
    assert "\n    sudo usermod -aG render,video bob\n" in out
    assert (
        "\n    echo 'GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT ttm.pages_limit=31326208 "
        "ttm.page_pool_size=31326208\"' | sudo tee /etc/default/grub.d/90-haloserve-ttm.cfg\n"
    ) in out
    assert "3 fail  5 warn  6 ok  7 skip  (exit code 1)" in out


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--list")
    assert code == 0
    for check_id in REGISTRY:
        assert check_id in out


def test_snapshot_with_json_keeps_stdout_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "s.tar.gz"
    code, out, err = run(capsys, "--root", str(FIXTURES / "rdma-node"), "--json", "--snapshot", str(out_file))
    assert code == 1 and out_file.exists()
    first = json.loads(out)
    assert err.strip() == f"snapshot written to {out_file}"
    code, out, _ = run(capsys, "--root", str(out_file), "--json")
    assert code == 1 and json.loads(out) == first


def test_models_dir_is_relative_to_the_working_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    _, out, _ = run(capsys, "--json", "--check", "models", "--models-dir", "models")
    result = json.loads(out)[0]
    assert result["status"] in ("ok", "warn", "fail")
    assert result["observed"].startswith(f"{tmp_path}/models: ")


def test_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    """No Strix Halo here: doctor says so, exits 1, and every other check has a clear status."""
    code, out, err = run(capsys, "--json")
    data = {d["id"]: d for d in json.loads(out)}
    assert err == ""
    assert code == 1
    assert data["gpu"]["status"] == "fail" and "no AMD GPU found" in data["gpu"]["observed"]
    assert data["kernel"]["observed"].startswith(os.uname().release)
    assert all("doctor could not evaluate" not in d["observed"] for d in data.values())


@pytest.mark.process
def test_entry_point_on_this_machine() -> None:
    """The installed ``halo`` script, end to end, with a human report."""
    halo = Path(sys.executable).with_name("halo")
    done = subprocess.run([str(halo), "doctor"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr == ""
    assert "no AMD GPU found" in done.stdout and "(exit code 1)" in done.stdout
