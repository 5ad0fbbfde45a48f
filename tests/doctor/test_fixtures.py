"""Each fixture tree gets the verdicts a Strix Halo expert would give, with fixes that can be pasted."""

from __future__ import annotations

import pytest

from haloserve.doctor import REGISTRY, Status
from tests.doctor.conftest import FIXTURE_NAMES, FIXTURES, results_for

OK, WARN, FAIL, SKIP = Status.OK, Status.WARN, Status.FAIL, Status.SKIP
NO_RDMA = {f"rdma{s}": SKIP for s in ("", ".gid", ".mtu", ".ecn", ".memlock", ".nccl")}
NO_RPC = {"rpc": SKIP}

EXPECTED: dict[str, dict[str, Status]] = {
    "strix-halo-128": {
        "kernel": OK, "amdgpu": OK, "iommu": OK, "gpu": OK, "devices": OK, "groups": OK,
        "memory": OK, "ttm": OK, "rocm": OK, "rocm.env": OK, "vulkan": OK, "container": OK,
        **NO_RDMA, "rpc": OK, "models": OK, "models.mmap": OK,
    },
    "seed-misconfigured": {
        "kernel": WARN, "amdgpu": OK, "iommu": WARN, "gpu": OK, "devices": FAIL, "groups": FAIL,
        "memory": FAIL, "ttm": WARN, "rocm": OK, "rocm.env": OK, "vulkan": WARN, "container": OK,
        **NO_RDMA, **NO_RPC, "models": OK, "models.mmap": WARN,
    },
    "strix-halo-64": {
        "kernel": OK, "amdgpu": OK, "iommu": OK, "gpu": OK, "devices": OK, "groups": OK,
        "memory": OK, "ttm": FAIL, "rocm": OK, "rocm.env": OK, "vulkan": OK, "container": OK,
        **NO_RDMA, **NO_RPC, "models": WARN, "models.mmap": OK,
    },
    "non-amd": {
        "kernel": WARN, "amdgpu": SKIP, "iommu": SKIP, "gpu": FAIL, "devices": SKIP, "groups": SKIP,
        "memory": SKIP, "ttm": SKIP, "rocm": SKIP, "rocm.env": SKIP, "vulkan": SKIP, "container": SKIP,
        **NO_RDMA, **NO_RPC, "models": OK, "models.mmap": SKIP,
    },
    "rdma-node": {
        "kernel": OK, "amdgpu": OK, "iommu": OK, "gpu": OK, "devices": OK, "groups": OK,
        "memory": OK, "ttm": OK, "rocm": OK, "rocm.env": OK, "vulkan": OK, "container": OK,
        "rdma": OK, "rdma.gid": FAIL, "rdma.mtu": WARN, "rdma.ecn": OK, "rdma.memlock": WARN,
        "rdma.nccl": SKIP, "rpc": WARN, "models": OK, "models.mmap": OK,
    },
    "igpu-dgpu": {
        "kernel": OK, "amdgpu": OK, "iommu": OK, "gpu": OK, "devices": OK, "groups": OK,
        "memory": OK, "ttm": OK, "rocm": OK, "rocm.env": OK, "vulkan": OK, "container": OK,
        **NO_RDMA, **NO_RPC, "models": OK, "models.mmap": OK,
    },
    "garbage": {
        "kernel": WARN, "amdgpu": OK, "iommu": OK, "gpu": WARN, "devices": FAIL, "groups": WARN,
        "memory": WARN, "ttm": SKIP, "rocm": WARN, "rocm.env": WARN, "vulkan": WARN, "container": SKIP,
        "rdma": FAIL, "rdma.gid": SKIP, "rdma.mtu": SKIP, "rdma.ecn": SKIP, "rdma.memlock": OK,
        "rdma.nccl": SKIP, **NO_RPC, "models": SKIP, "models.mmap": SKIP,
    },
}  # fmt: skip


def test_every_fixture_has_a_verdict_table() -> None:
    assert sorted(EXPECTED) == FIXTURE_NAMES
    for table in EXPECTED.values():
        assert list(table) == list(REGISTRY)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_verdicts(name: str) -> None:
    got = {cid: r.status for cid, r in results_for(FIXTURES / name).items()}
    assert got == EXPECTED[name]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_problem_explains_itself(name: str) -> None:
    for result in results_for(FIXTURES / name).values():
        assert result.observed, result.id
        if result.status is Status.FAIL:
            assert result.why and result.fix, result.id
        assert "sudo echo" not in result.fix  # errata 6: echo ... | sudo tee


def test_healthy_box_reports_memory_once_each() -> None:
    r = results_for(FIXTURES / "strix-halo-128")
    memory = r["memory"].observed
    assert "installed ~128 GiB" in memory
    assert "OS 125.7 GiB" in memory and "carve-out 0.5 GiB" in memory and "GTT limit 120.0 GiB" in memory
    # GTT is borrowed from the OS RAM: the GPU can address carve-out + GTT, never RAM + GTT.
    assert "GPU can address ~120.5 GiB" in memory
    # the planner's number (tuned_budget): 128 - 0.5 carve-out - 8 GiB for Linux = 119.5 GiB
    assert "ttm.pages_limit=31326208" in r["ttm"].expected
    assert r["ttm"].status is Status.OK  # the 120 GiB limit this box has is close enough
    assert "Radeon 8060S" in r["gpu"].observed and "40 CUs" in r["gpu"].observed
    assert "ROCm 7.2.1-81 at /opt/rocm" in r["rocm"].observed  # /opt/rocm -> /etc/alternatives -> rocm-7.2.1


def test_seed_box_fixes() -> None:
    r = results_for(FIXTURES / "seed-misconfigured")
    assert "leaves the OS only 30.7 GiB" in r["memory"].observed
    assert "UMA Frame Buffer Size" in r["memory"].fix and "reboot --firmware-setup" in r["memory"].fix
    assert "kernel default" in r["ttm"].observed
    assert "ttm.pages_limit=31326208 ttm.page_pool_size=31326208" in r["ttm"].fix
    assert "/etc/default/grub.d/90-haloserve-ttm.cfg" in r["ttm"].fix  # Ubuntu: a grub.d drop-in
    assert any("carve-out is first reduced" in n for n in r["ttm"].notes)
    assert r["groups"].fix.startswith("sudo usermod -aG render,video bob")
    assert "permission denied: /dev/kfd" in r["devices"].observed
    assert "iommu=pt" in r["iommu"].fix and "amd_iommu=off" in r["iommu"].fix
    assert "6 %" in r["iommu"].why
    assert "older than 6.16.9" in r["kernel"].observed
    # errata 7: 11.0.0 is the ROCm 6.4.x workaround, fine there, to be dropped with ROCm 7.
    assert "6.4.x workaround" in r["rocm"].observed
    assert "LLAMA_ARG_MMAP=false" in r["models.mmap"].fix and "15018" in r["models.mmap"].why
    assert any("--group-add 44 --group-add 992" in n for n in r["container"].notes)


def test_64gb_box_gets_its_own_ttm_values() -> None:
    r = results_for(FIXTURES / "strix-halo-64")
    assert "more than the OS has" in r["ttm"].observed
    # 55.5 GiB x 262144 pages/GiB (64 - 0.5 carve-out - 8 for Linux), as halo plan and deploy print
    assert "ttm.pages_limit=14548992" in r["ttm"].expected
    assert "55.50 GiB of GTT on 64 GiB" in r["ttm"].expected
    assert (
        'sudo grubby --update-kernel=ALL --args="ttm.pages_limit=14548992 ttm.page_pool_size=14548992"'
        in (r["ttm"].fix)
    )
    assert "Radeon 8050S" in r["gpu"].observed
    assert "GPU can address ~62.8 GiB" in r["memory"].observed  # the 122 GiB GTT limit is capped by RAM
    assert "passthrough" in r["iommu"].observed
    assert "28.9 GiB free" in r["models"].observed


def test_non_amd_host_says_so() -> None:
    r = results_for(FIXTURES / "non-amd")
    assert "no AMD GPU found" in r["gpu"].observed and "not a Strix Halo" in r["gpu"].observed
    assert "no AMD display device" in r["amdgpu"].observed


def test_rdma_node() -> None:
    r = results_for(FIXTURES / "rdma-node")
    assert "mlx5_0 port 1: ACTIVE, LinkUp, Ethernet, 100 Gb/sec" in r["rdma"].observed
    assert "no RoCE v2 IPv4 GID" in r["rdma.gid"].observed
    assert "dev ens1f0np0" in r["rdma.gid"].fix
    assert r["rdma.mtu"].observed == "ens1f0np0: MTU 1500"
    assert r["rdma.mtu"].fix.startswith("sudo ip link set dev ens1f0np0 mtu 9000")
    assert "8192 KiB" in r["rdma.memlock"].observed
    assert "memlock unlimited" in r["rdma.memlock"].fix and "sudo tee /etc/security/limits.d/" in (
        r["rdma.memlock"].fix
    )
    assert any("--device /dev/infiniband" in n for n in r["container"].notes)


def test_integrated_plus_discrete() -> None:
    r = results_for(FIXTURES / "igpu-dgpu")
    assert "gfx1151" in r["gpu"].observed and "gfx1100 (Navi 31" in r["gpu"].observed
    assert any("HIP_VISIBLE_DEVICES" in n for n in r["gpu"].notes)
    assert any("HIP_VISIBLE_DEVICES=0 is set" in n for n in r["gpu"].notes)
    assert "/dev/dri/renderD129" in r["devices"].observed
    # The discrete card's 24 GiB VRAM is not the APU's carve-out.
    assert "carve-out 0.5 GiB" in r["memory"].observed


def test_garbage_never_crashes_and_says_what_is_wrong() -> None:
    r = results_for(FIXTURES / "garbage")
    for result in r.values():
        assert "doctor could not evaluate" not in result.observed, result
    assert "unparseable" in r["kernel"].observed
    assert "not a valid target" in r["gpu"].observed
    assert "is a file, not a device" in r["devices"].observed
    assert "not of the form X.Y.Z" in r["rocm"].observed
    assert "=0 turns managed memory on" in r["rocm.env"].why
    assert "RADV ICD manifest unreadable" in r["vulkan"].observed
