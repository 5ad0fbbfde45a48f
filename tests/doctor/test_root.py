"""Roots read under a directory or an archive, chroot-style, and never fail on odd files."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from haloserve.doctor.root import ArchiveBackend, Root, live_root, open_root
from haloserve.errors import ConfigError
from tests.doctor.conftest import FIXTURES, results_for, write_tree


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    root_dir = write_tree(
        tmp_path / "r", {"opt/rocm-7.0.2/.info/version": "7.0.2-56\n", "etc/secret": "inside\n"}
    )
    os.symlink("/opt/rocm-7.0.2", root_dir / "opt/rocm")  # absolute: re-rooted, not the host's /opt
    os.symlink("../../../../../../etc/secret", root_dir / "opt/up")  # '..' stops at the root
    root = open_root(root_dir)
    assert root.text("opt/rocm/.info/version") == "7.0.2-56"
    assert root.text("/opt/up") == "inside"


def test_escaping_links_never_reach_the_host(tmp_path: Path) -> None:
    root_dir = write_tree(tmp_path / "r", {"x": "1"})
    os.symlink("/etc/passwd", root_dir / "passwd")
    os.symlink("../../../../../../../../etc/hostname", root_dir / "hostname")
    root = open_root(root_dir)
    assert root.read("passwd").error == "missing"  # /etc/passwd of the tree, which does not exist
    assert root.read("hostname").error == "missing"
    assert root.read("../../etc/hostname").error == "missing"


def test_symlink_loops_and_dangling_links(tmp_path: Path) -> None:
    root_dir = write_tree(tmp_path / "r", {})
    os.symlink("a", root_dir / "b")
    os.symlink("b", root_dir / "a")
    os.symlink("nowhere", root_dir / "dangling")
    root = open_root(root_dir)
    assert root.read("a").error == "missing"
    assert root.stat("a") is None
    assert root.read("dangling").error == "missing"
    assert root.listdir("a") == []


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    root_dir = write_tree(tmp_path / "r", {"d/f": "x"})
    os.mkfifo(root_dir / "fifo")  # reading it would block forever
    root = open_root(root_dir)
    assert root.read("fifo").error == "not a regular file"
    assert root.read("d").error == "not a regular file"
    node = root.stat("fifo")
    assert node is not None and node.kind == "fifo"


def test_unreadable_file_on_disk(tmp_path: Path) -> None:
    """A file that exists but cannot be read gives its OS error, never an exception."""
    if os.geteuid() != 0:
        root_dir = write_tree(tmp_path / "r", {"proc/meminfo": "MemTotal: 1 kB\n"})
        (root_dir / "proc/meminfo").chmod(0)
        got = open_root(root_dir).read("proc/meminfo")
    else:
        # root reads any mode; sysfs write-only attributes refuse reads even to root
        candidates = ["sys/bus/pci/uevent", "sys/bus/platform/uevent", "sys/bus/pci/rescan"]
        path = next(p for p in candidates if os.path.exists("/" + p))
        got = live_root().read(path)
    assert got.text is None and got.error == "Permission denied"


def test_unreadable_files_declared_in_the_manifest(tmp_path: Path) -> None:
    root_dir = write_tree(
        tmp_path / "r",
        {"proc/meminfo": "MemTotal: 1 kB\n"},
        {
            "unreadable": {"/proc/meminfo": "Permission denied"},
            "nodes": {"dev/kfd": {"kind": "char", "mode": "0666"}},
        },
    )
    root = open_root(root_dir)
    assert root.read("proc/meminfo").error == "Permission denied"
    assert root.listdir("dev") == ["kfd"]  # declared nodes appear in listings and imply their directories
    assert root.is_dir("dev")
    kfd = root.stat("/dev/kfd")
    assert kfd is not None and kfd.kind == "char" and kfd.mode == 0o666
    assert root.listdir("") == ["dev", "proc"]  # the manifest itself is not part of the tree


def test_large_and_binary_files_are_bounded_and_decoded(tmp_path: Path) -> None:
    root_dir = write_tree(tmp_path / "r", {})
    (root_dir / "big").write_bytes(b"a" * (3 << 20))
    (root_dir / "bin").write_bytes(b"\xff\xfe\x00abc")
    root = open_root(root_dir)
    big = root.read("big").text
    assert big is not None and len(big) == 1 << 20
    assert root.read("bin").text == "\ufffd\ufffd\x00abc"


def test_glob(tmp_path: Path) -> None:
    root_dir = write_tree(tmp_path / "r", {"a/x1/f": "", "a/x2/f": "", "a/y/f": "", "a/x3": ""})
    root = open_root(root_dir)
    assert root.glob("a/x*/f") == ["a/x1/f", "a/x2/f"]
    assert root.glob("/a/[xy]*") == ["a/x1", "a/x2", "a/x3", "a/y"]
    assert root.glob("missing/*") == []


def _archive(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp_path / "snap.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_archive_members_symlinks_devices_and_traversal(tmp_path: Path) -> None:
    def reg(name: str) -> tarfile.TarInfo:
        return tarfile.TarInfo(name)

    link = tarfile.TarInfo("opt/rocm")
    link.type, link.linkname = tarfile.SYMTYPE, "/opt/rocm-7.1.0"
    hard = tarfile.TarInfo("copy")
    hard.type, hard.linkname = tarfile.LNKTYPE, "./opt/rocm-7.1.0/.info/version"
    dev = tarfile.TarInfo("dev/kfd")
    dev.type, dev.mode, dev.gid, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 0o660, 992, 236, 0
    path = _archive(
        tmp_path,
        [
            (reg("./opt/rocm-7.1.0/.info/version"), b"7.1.0-1\n"),
            (link, None),
            (hard, None),
            (dev, None),
            (reg("../../escape"), b"clamped\n"),
        ],
    )
    root = open_root(path)
    assert root.text("opt/rocm/.info/version") == "7.1.0-1"
    assert root.text("copy") == "7.1.0-1"
    kfd = root.stat("dev/kfd")
    assert kfd is not None and kfd.kind == "char" and kfd.gid == 992 and kfd.rdev == os.makedev(236, 0)
    assert root.text("escape") == "clamped"  # '..' in member names cannot leave the archive's root
    assert root.read("dev/kfd").error == "not a regular file"
    assert root.listdir("opt") == ["rocm", "rocm-7.1.0"]


def test_open_root_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory or archive"):
        open_root(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="neither a directory nor a tar archive"):
        open_root(tmp_path / "notes.txt")
    truncated = tmp_path / "cut.tar.gz"
    good = _archive(tmp_path, [(tarfile.TarInfo("f"), os.urandom(100_000))])
    truncated.write_bytes(good.read_bytes()[:50_000])
    with pytest.raises(ConfigError):
        open_root(truncated)


def test_broken_manifest_is_one_clear_error(tmp_path: Path) -> None:
    write_tree(tmp_path / "a", {})
    (tmp_path / "a/halo-doctor.json").write_text("{nope")
    with pytest.raises(ConfigError, match=r"halo-doctor\.json is not valid JSON"):
        open_root(tmp_path / "a")
    write_tree(tmp_path / "b", {}, {"nodes": {"dev/kfd": {"kind": "teapot"}}})
    with pytest.raises(ConfigError, match=r"nodes\.dev/kfd\.kind"):
        open_root(tmp_path / "b")
    write_tree(tmp_path / "c", {}, {"format": 99})
    with pytest.raises(ConfigError, match="format 99"):
        open_root(tmp_path / "c")


def test_live_root_reads_this_machine_and_ignores_manifests() -> None:
    root = live_root()
    assert root.live and root.manifest.nodes == {}
    assert root.text("proc/sys/kernel/osrelease") == os.uname().release
    assert open_root("/").live
    usage = root.disk_usage("/")
    assert usage is not None and 0 < usage.free <= usage.total
    assert root.access("proc/meminfo") is not None


def test_empty_root_gives_clear_statuses(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    results = results_for(empty)
    assert results["gpu"].observed.startswith("no AMD GPU found")
    assert results["kernel"].observed == "kernel version unreadable"
    assert all("doctor could not evaluate" not in r.observed for r in results.values())
    assert results["groups"].status.value == "skip"


def test_archive_backend_keeps_archives_in_memory(tmp_path: Path) -> None:
    path = _archive(tmp_path, [(tarfile.TarInfo("proc/meminfo"), b"MemTotal: 1024 kB\n")])
    backend = ArchiveBackend(path)
    path.unlink()  # nothing is extracted or re-read from disk
    root = Root(backend, "snap")
    assert root.text("proc/meminfo") == "MemTotal: 1024 kB"


def test_fixture_manifests_are_valid() -> None:
    for manifest in FIXTURES.glob("*/halo-doctor.json"):
        data = json.loads(manifest.read_text())
        assert data["format"] == 1
        open_root(manifest.parent)
