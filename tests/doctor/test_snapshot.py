"""Snapshots capture exactly what doctor read, nothing personal, and replay to identical results."""

from __future__ import annotations

import json
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from haloserve.doctor import diagnose, facts_for, live_root, open_root, options_for
from haloserve.doctor.facts import ENV_KEYS, live_facts
from haloserve.doctor.snapshot import Recorder, write_snapshot
from haloserve.errors import ConfigError
from tests.doctor.conftest import FIXTURE_NAMES, FIXTURES, edit_manifest, write_tree


def snapshot(root_spec: str | Path, out: Path, *checks: str, **options: str) -> list[dict[str, object]]:
    """Diagnose through a recorder, write the snapshot, return the results as dicts."""
    root = open_root(root_spec)
    facts = facts_for(root)
    recorder = Recorder(root)
    opts = options_for(root, **options)
    results = diagnose(recorder, facts, opts, checks)
    write_snapshot(recorder, facts, out, opts.models_dir)
    return [r.to_dict() for r in results]


def replay(archive: Path, *checks: str) -> list[dict[str, object]]:
    root = open_root(archive)
    return [r.to_dict() for r in diagnose(root, facts_for(root), options_for(root), checks)]


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read().decode()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_round_trip(tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.tar.gz"
    original = snapshot(FIXTURES / name, out)
    assert replay(out) == original


def test_live_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "live.tar.gz"
    original = snapshot("/", out)
    assert replay(out) == original
    manifest = json.loads(read_member(out, "halo-doctor.json"))
    assert manifest["source"] == "live host" and manifest["facts"]["uid"] is not None
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # private by default


def test_a_snapshot_holds_exactly_what_was_read(tmp_path: Path) -> None:
    out = tmp_path / "k.tar.gz"
    snapshot(FIXTURES / "seed-misconfigured", out, "kernel")
    assert sorted(members(out)) == [
        "etc",
        "etc/os-release",
        "halo-doctor.json",
        "proc",
        "proc/sys",
        "proc/sys/kernel",
        "proc/sys/kernel/osrelease",
    ]
    assert replay(out, "kernel")[0]["status"] == "warn"


def test_no_personal_data(tmp_path: Path) -> None:
    out = tmp_path / "seed.tar.gz"
    snapshot(FIXTURES / "seed-misconfigured", out)
    group = read_member(out, "etc/group")
    assert sorted(line.split(":")[0] for line in group.splitlines()) == ["docker", "render", "video"]
    cmdline = read_member(out, "proc/cmdline")
    assert "UUID" not in cmdline and "BOOT_IMAGE" not in cmdline
    manifest = json.loads(read_member(out, "halo-doctor.json"))
    assert manifest["facts"]["groups"] == ["docker"]  # adm, sudo and bob are none of doctor's business
    assert set(manifest["facts"]["env"]) <= set(ENV_KEYS)
    for info in members(out).values():
        assert info.uname == "" and info.gname == "" and info.mtime == 0


def test_kernel_command_line_keeps_only_what_doctor_judges(tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "t",
        {
            "proc/cmdline": "BOOT_IMAGE=/vmlinuz root=UUID=abc ro cryptdevice=secret:x iommu=pt "
            "ttm.pages_limit=5 amdgpu.gttsize=1 nomodeset\n"
        },
        {"facts": {"user": "u"}},
    )
    (tree / "sys/module/amdgpu").mkdir(parents=True)
    out = tmp_path / "c.tar.gz"
    snapshot(tree, out, "iommu", "amdgpu")
    assert read_member(out, "proc/cmdline") == "iommu=pt ttm.pages_limit=5 amdgpu.gttsize=1 nomodeset\n"


def test_environment_capture_is_limited_to_known_variables() -> None:
    facts = live_facts({"OPENAI_API_KEY": "sk-secret", "HSA_XNACK": "1", "HOME": "/home/x"})
    assert facts.env == {"HSA_XNACK": "1"}


def test_globbed_directories_keep_only_matches(tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path / "t",
        {"models/diary.txt": "dear diary", "models/m.gguf": "GGUF", "models/sub/n.gguf": "GGUF"},
        {"facts": {"user": "u", "env": {}}, "disk": {"models": {"total": 10**12, "free": 10**11}}},
    )
    out = tmp_path / "g.tar.gz"
    original = snapshot(tree, out, "models", models_dir="models")
    names = set(members(out))
    assert "models/diary.txt" not in names
    manifest = json.loads(read_member(out, "halo-doctor.json"))
    assert {"models/m.gguf", "models/sub/n.gguf"} <= set(manifest["nodes"])
    assert replay(out, "models") == original


def test_unreadable_files_are_recorded(tmp_path: Path, fixture_copy: Callable[[str], Path]) -> None:
    root = fixture_copy("strix-halo-128")
    edit_manifest(root, lambda d: d.update(unreadable={"proc/meminfo": "Permission denied"}))
    out = tmp_path / "u.tar.gz"
    original = snapshot(root, out, "memory")
    assert original[0]["observed"] == "cannot read MemTotal from /proc/meminfo"
    manifest = json.loads(read_member(out, "halo-doctor.json"))
    assert manifest["unreadable"] == {"proc/meminfo": "Permission denied"}
    assert "proc/meminfo" not in members(out)  # no content, only the recorded error (and its stat)
    assert replay(out, "memory") == original


def test_snapshot_errors_leave_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        snapshot(FIXTURES / "non-amd", tmp_path / "missing" / "s.tar.gz")
    assert list(tmp_path.iterdir()) == []


def test_resnapshot_of_a_snapshot(tmp_path: Path) -> None:
    first, second = tmp_path / "1.tar.gz", tmp_path / "2.tar.gz"
    original = snapshot(FIXTURES / "igpu-dgpu", first)
    assert snapshot(first, second) == original
    assert replay(second) == original


def test_live_root_is_not_recorded_twice() -> None:
    root = live_root()
    recorder = Recorder(root)
    recorder.read("proc/meminfo")
    recorder.glob("proc/sys/kernel/os*")
    assert "proc/meminfo" in recorder.reads
    assert "proc/sys/kernel" not in recorder.listings  # glob internals are not recorded
    assert "proc/sys/kernel/osrelease" in recorder.stats
