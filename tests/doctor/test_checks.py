"""Check logic across the cases an expert distinguishes, on edited copies of the fixture trees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haloserve.doctor import Status
from haloserve.doctor.check import Check
from haloserve.doctor.checks.kernel import judge_kernel
from haloserve.doctor.checks.rocm import judge_override
from haloserve.doctor.host import Host
from haloserve.doctor.parse import parse_kernel_version
from haloserve.doctor.registry import select
from haloserve.doctor.result import Verdict
from haloserve.doctor.root import open_root
from haloserve.errors import ConfigError
from haloserve.units import GiB
from tests.doctor.conftest import edit_manifest, results_for

Copy = Callable[[str], Path]
OK, WARN, FAIL, SKIP = Status.OK, Status.WARN, Status.FAIL, Status.SKIP
HALO = "strix-halo-128"
PORT = "sys/class/infiniband/mlx5_0/ports/1"


def put(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)


def env(root: Path, **values: str | None) -> None:
    def change(data: dict[str, Any]) -> None:
        for key, value in values.items():
            if value is None:
                data["facts"]["env"].pop(key, None)
            else:
                data["facts"]["env"][key] = value

    edit_manifest(root, change)


@pytest.mark.parametrize(
    ("release", "status", "note"),
    [
        ("6.8.0-45-generic", WARN, False),
        ("6.16.8", WARN, False),
        ("6.16.9", OK, True),
        ("6.17.0-14-generic", OK, True),
        ("6.18.4", OK, False),
        ("7.0.1-arch1-1", OK, False),
        ("6.14.0-1018-oem", OK, True),
        ("6.14.0-1017-oem", WARN, False),
    ],
)
def test_kernel_thresholds(release: str, status: Status, note: bool) -> None:
    verdict = judge_kernel(parse_kernel_version(release), release, "debian")
    assert verdict.status is status
    assert bool(verdict.notes) is note
    if status is WARN:
        assert "apt list" in verdict.fix


def test_kernel_fix_follows_the_distribution() -> None:
    old = parse_kernel_version("6.12.0")
    assert "dnf upgrade" in judge_kernel(old, "6.12.0", "fedora").fix
    assert "pacman -Syu linux" in judge_kernel(old, "6.12.0", "arch").fix
    assert judge_kernel(None, None, "debian").observed == "kernel version unreadable"


@pytest.mark.parametrize(
    ("rocm", "override", "status", "words"),
    [
        ((7, 0, 2), None, OK, "no override needed"),
        ((7, 2, 1), "11.5.1", OK, "restates the native target"),
        ((7, 2, 1), "11.0.0", WARN, "native gfx1151"),
        ((6, 4, 1), None, WARN, "11.0.0"),
        ((6, 4, 3), "11.0.0", OK, "6.4.x workaround"),
        ((6, 4, 1), "11.5.1", WARN, "upgrade to ROCm 7"),
        ((6, 3, 0), None, WARN, "predates Strix Halo"),
        ((7, 0, 0), "gfx1151", WARN, "not of the form X.Y.Z"),
    ],
)
def test_override_by_rocm_version(
    rocm: tuple[int, int, int], override: str | None, status: Status, words: str
) -> None:
    got, message, fix = judge_override(rocm, override, strix_halo=True)
    assert got is status and words in message
    if status is WARN:
        assert fix
    if override == "11.0.0" and rocm >= (7, 0, 0):
        assert fix.startswith("unset HSA_OVERRIDE_GFX_VERSION")


def test_override_left_alone_on_other_gpus() -> None:
    assert judge_override((6, 2, 0), "11.0.0", strix_halo=False)[0] is OK


@pytest.mark.parametrize(
    ("pages", "status", "words"),
    [
        (16_469_264, WARN, "kernel default"),  # half of 125.65 GiB
        (20_000_000, WARN, "below the recommendation"),
        (31_000_000, OK, ""),
        (31_457_280, OK, ""),
        (32_000_000, WARN, "leaves only 3.6 GiB"),  # the seed's 122 GiB on a 128 GB box
        (33_000_000, FAIL, "more than the OS has"),
    ],
)
def test_ttm_limits(fixture_copy: Copy, pages: int, status: Status, words: str) -> None:
    root = fixture_copy(HALO)
    put(root, "sys/module/ttm/parameters/pages_limit", f"{pages}\n")
    put(root, "sys/module/ttm/parameters/page_pool_size", f"{pages}\n")
    result = results_for(root, "ttm")["ttm"]
    assert result.status is status
    assert words in result.observed
    if status is not OK:
        assert "ttm.pages_limit=31326208" in result.fix


def test_ttm_pool_and_missing_parameters(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    put(root, "sys/module/ttm/parameters/page_pool_size", "8000000\n")
    result = results_for(root, "ttm")["ttm"]
    assert result.status is OK and "page_pool_size (8000000) is below pages_limit" in result.notes[0]
    (root / "sys/module/ttm/parameters/pages_limit").unlink()
    result = results_for(root, "ttm")["ttm"]
    assert result.status is WARN and "pages_limit missing" in result.observed


@pytest.mark.parametrize(
    ("carve_gib", "status"), [(0.5, OK), (4, OK), (8, WARN), (32, WARN), (64, WARN), (96, FAIL)]
)
def test_carveout(fixture_copy: Copy, carve_gib: float, status: Status) -> None:
    root = fixture_copy(HALO)
    carve = int(carve_gib * GiB)
    mem_kb = (128 * GiB - carve - int(1.4 * GiB)) // 1024
    put(root, "proc/meminfo", f"MemTotal: {mem_kb} kB\n")
    put(root, "sys/class/drm/renderD128/device/mem_info_vram_total", f"{carve}\n")
    result = results_for(root, "memory")["memory"]
    assert result.status is status
    assert "installed ~128 GiB" in result.observed


def test_groups_stale_session_other_user_and_root(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    edit_manifest(root, lambda d: d["facts"].update(groups=["alice", "wheel"]))
    result = results_for(root, "groups")["groups"]
    assert result.status is WARN and "login session predates it" in result.observed
    assert "newgrp render" in result.fix
    # the same user named explicitly still has the stale session; another user: /etc/group decides
    assert results_for(root, "groups", user="alice")["groups"].status is WARN
    put(root, "etc/group", "render:x:105:alice,bob\nvideo:x:39:alice,bob\n")
    assert results_for(root, "groups", user="bob")["groups"].status is OK
    other = results_for(root, "groups", user="mallory")["groups"]
    assert other.status is FAIL and other.fix.startswith("sudo usermod -aG render,video mallory")
    put(root, "etc/group", "render:x:105:alice\nvideo:x:39:\n")
    edit_manifest(root, lambda d: d["facts"].update(groups=["alice", "render"]))
    only_video = results_for(root, "groups")["groups"]
    assert only_video.status is WARN and "not in video" in only_video.observed
    edit_manifest(root, lambda d: d["facts"].update(uid=0, user="root"))
    assert results_for(root, "groups")["groups"].status is OK
    edit_manifest(root, lambda d: d.pop("facts"))
    assert results_for(root, "groups")["groups"].status is SKIP


def test_devices_missing_denied_and_recorded_access(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    edit_manifest(root, lambda d: d["nodes"].pop("dev/dri/renderD128"))
    result = results_for(root, "devices")["devices"]
    assert result.status is FAIL and "missing: /dev/dri/renderD128" in result.observed
    root = fixture_copy("igpu-dgpu")
    edit_manifest(root, lambda d: d.update(access={"dev/kfd": False}))
    result = results_for(root, "devices")["devices"]
    assert result.status is FAIL and "permission denied: /dev/kfd" in result.observed
    edit_manifest(root, lambda d: d["nodes"]["dev/kfd"].update(mode="0666"))
    edit_manifest(root, lambda d: d.update(access={}))
    edit_manifest(root, lambda d: d["facts"].update(groups=["frank"]))
    assert results_for(root, "devices")["devices"].status is FAIL  # renderD* still need render
    edit_manifest(root, lambda d: d.pop("facts"))
    unknown = results_for(root, "devices")["devices"]
    assert unknown.status is OK and "access not verifiable" in unknown.observed


def test_iommu_variants(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    put(root, "proc/cmdline", "ro quiet iommu=pt\n")
    assert results_for(root, "iommu")["iommu"].observed == "IOMMU in passthrough mode (iommu=pt)"
    put(root, "proc/cmdline", "ro quiet\n")
    assert results_for(root, "iommu")["iommu"].status is OK  # no IOMMU units: off in the BIOS
    put(root, "sys/class/iommu/ivhd0/amd-iommu/cap", "0x0\n")
    warn = results_for(root, "iommu")["iommu"]
    assert warn.status is WARN and "ivhd0" in warn.observed
    assert 'sudo grubby --update-kernel=ALL --args="iommu=pt"' in warn.fix  # Fedora fixture
    put(root, "sys/class/drm/renderD128/device/iommu_group/type", "identity\n")
    assert results_for(root, "iommu")["iommu"].status is OK


def _good_rdma(root: Path) -> None:
    put(root, f"{PORT}/gids/3", "0000:0000:0000:0000:0000:ffff:0a00:0101\n")
    put(root, f"{PORT}/gid_attrs/types/3", "RoCE v2\n")
    put(root, f"{PORT}/gid_attrs/ndevs/3", "ens1f0np0\n")
    put(root, "sys/class/net/ens1f0np0/mtu", "9000\n")
    edit_manifest(
        root,
        lambda d: [d["unreadable"].pop(f"{PORT}/gid_attrs/{k}/3") for k in ("types", "ndevs")],
    )


def test_rdma_fixed_node(fixture_copy: Copy) -> None:
    root = fixture_copy("rdma-node")
    _good_rdma(root)
    r = results_for(root, "rdma")
    assert r["rdma.gid"].status is OK and "GID 3 = 10.0.1.1 (ens1f0np0)" in r["rdma.gid"].observed
    assert r["rdma.mtu"].status is OK
    nccl = r["rdma.nccl"]
    assert nccl.status is WARN and "NCCL_IB_GID_INDEX=0 is not a RoCE v2 IPv4 GID" in nccl.observed
    assert "NCCL_SOCKET_IFNAME=eth matches no network device" in nccl.observed
    assert nccl.fix.splitlines() == [
        "export NCCL_IB_HCA==mlx5_0:1",
        "export NCCL_IB_GID_INDEX=3",
        "export NCCL_SOCKET_IFNAME==ens1f0np0",
        "export GLOO_SOCKET_IFNAME=ens1f0np0",
    ]
    env(root, NCCL_IB_GID_INDEX="3", NCCL_SOCKET_IFNAME="=ens1f0np0")
    assert results_for(root, "rdma.nccl")["rdma.nccl"].status is OK
    env(root, NCCL_IB_DISABLE="1")
    assert "turns RDMA off" in results_for(root, "rdma.nccl")["rdma.nccl"].observed


def test_rdma_down_port_infiniband_and_ecn(fixture_copy: Copy) -> None:
    root = fixture_copy("rdma-node")
    _good_rdma(root)
    for prio in range(8):
        put(root, f"sys/class/net/ens1f0np0/ecn/roce_rp/enable/{prio}", "0\n")
    ecn = results_for(root, "rdma.ecn")["rdma.ecn"]
    assert ecn.status is WARN and "ECN off (roce_rp)" in ecn.observed
    assert ecn.fix == (
        "for p in 0 1 2 3 4 5 6 7; do echo 1 | sudo tee /sys/class/net/ens1f0np0/ecn/roce_np/enable/$p "
        "/sys/class/net/ens1f0np0/ecn/roce_rp/enable/$p; done"
    )
    put(root, f"{PORT}/state", "1: DOWN\n")
    put(root, f"{PORT}/phys_state", "3: Disabled\n")
    down = results_for(root, "rdma")
    assert down["rdma"].status is FAIL and "sudo ip link set dev ens1f0np0 up" in down["rdma"].fix
    assert down["rdma.gid"].status is SKIP
    put(root, f"{PORT}/state", "4: ACTIVE\n")
    put(root, f"{PORT}/link_layer", "InfiniBand\n")
    ib = results_for(root, "rdma")
    assert ib["rdma"].status is OK and "native InfiniBand" in ib["rdma"].notes[0]
    assert ib["rdma.mtu"].status is SKIP


def test_models_disk_and_mmap(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    edit_manifest(root, lambda d: d["disk"]["srv/models"].update(free=512 * 1024**2))
    assert results_for(root, "models")["models"].status is FAIL
    r = results_for(root, "models", models_dir="/srv/elsewhere")
    assert r["models"].status is WARN and r["models"].fix == "mkdir -p /srv/elsewhere"
    env(root, LLAMA_ARG_MMAP=None)
    mmap = results_for(root, "models.mmap")["models.mmap"]
    assert mmap.status is WARN and "Qwen3-Coder-Next-Q8_0 (85 GB)" in mmap.observed  # 3 split parts summed
    env(root, LLAMA_ARG_NO_MMAP="1")
    assert results_for(root, "models.mmap")["models.mmap"].status is OK
    env(root, LLAMA_ARG_NO_MMAP=None, LLAMA_ARG_MMAP="off")
    assert results_for(root, "models.mmap")["models.mmap"].status is OK
    edit_manifest(root, lambda d: d.pop("facts"))
    unknown = results_for(root, "models.mmap")["models.mmap"]
    assert unknown.status is WARN and "environment not captured" in unknown.observed


def test_rocm_env_and_vulkan(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    env(root, GGML_CUDA_ENABLE_UNIFIED_MEMORY="0", HSA_XNACK="1")
    r = results_for(root, "rocm.env")["rocm.env"]
    assert r.status is WARN and r.fix == "unset GGML_CUDA_ENABLE_UNIFIED_MEMORY"
    assert any("XNACK" in n and "gfx1151" in n for n in r.notes)
    amdvlk = '{"ICD": {"library_path": "/usr/lib64/amdvlk64.so", "api_version": "1.4.308"}}'
    put(root, "etc/vulkan/icd.d/amd_icd64.json", amdvlk)
    both = results_for(root, "vulkan")["vulkan"]
    assert both.status is OK and "VK_DRIVER_FILES" in both.notes[0]
    (root / "usr/share/vulkan/icd.d/radeon_icd.x86_64.json").unlink()
    only = results_for(root, "vulkan")["vulkan"]
    assert (
        only.status is WARN
        and "discontinued" in only.why
        and only.fix == "sudo dnf install mesa-vulkan-drivers"
    )


def test_rocm_newest_versioned_install_and_override_warning(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    (root / "opt/rocm").unlink()
    put(root, "opt/rocm-6.4.1/.info/version", "6.4.1-83\n")
    env(root, HSA_OVERRIDE_GFX_VERSION="11.0.0")
    r = results_for(root, "rocm")["rocm"]
    assert "ROCm 7.2.1-81 at /opt/rocm-7.2.1" in r.observed  # the newest of the versioned installs
    assert r.status is WARN and r.fix.startswith("unset HSA_OVERRIDE_GFX_VERSION")


def test_amdgpu_missing_with_amd_hardware(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    for path in sorted((root / "sys/module/amdgpu").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "sys/module/amdgpu").rmdir()
    put(root, "proc/cmdline", "ro nomodeset modprobe.blacklist=amdgpu\n")
    r = results_for(root, "amdgpu")["amdgpu"]
    assert r.status is FAIL and "1002:1586" in r.observed
    assert "nomodeset" in r.observed and "blacklisted" in r.observed
    assert "sudo modprobe amdgpu" in r.fix


def test_gpu_variants(fixture_copy: Copy) -> None:
    root = fixture_copy(HALO)
    props = root / "sys/class/kfd/kfd/topology/nodes/1/properties"
    props.write_text(props.read_text().replace("110501", "110500"))
    point = results_for(root, "gpu")["gpu"]
    assert point.status is WARN and "gfx1150 (Strix Point" in point.observed
    assert any("not Strix Halo" in n for n in point.notes)
    for path in sorted((root / "sys/class/kfd").rglob("*"), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    nokfd = results_for(root, "gpu")["gpu"]
    assert nokfd.status is FAIL and "KFD compute interface is missing" in nokfd.observed


def test_a_crashing_check_becomes_a_warning(tmp_path: Path) -> None:
    def boom(host: Host) -> Verdict:
        raise ZeroDivisionError("bug")

    tmp_path.joinpath("x").write_text("")
    result = Check("boom", "Boom", "Models", boom)(Host(open_root(tmp_path), facts_from_nothing()))
    assert result.status is WARN and "ZeroDivisionError: bug" in result.observed
    assert "--snapshot" in result.fix


def facts_from_nothing() -> Any:
    from haloserve.doctor.facts import HostFacts

    return HostFacts()


def test_select_ids_and_groups() -> None:
    assert [c.id for c in select(["rdma"])] == [
        "rdma", "rdma.gid", "rdma.mtu", "rdma.ecn", "rdma.memlock", "rdma.nccl"
    ]  # fmt: skip
    assert [c.id for c in select(["RDMA.gid", "kernel"])] == ["kernel", "rdma.gid"]
    assert len(select([])) == 21
    with pytest.raises(ConfigError, match=r"unknown check 'rdm' \(known: kernel, amdgpu"):
        select(["rdm"])
