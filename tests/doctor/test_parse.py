"""Pure parsers, the gfx target table and the memory budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haloserve.doctor import gfx, parse
from haloserve.doctor.budget import gpu_addressable, installed_ram
from haloserve.units import GiB, KiB, MiB


@pytest.mark.parametrize(
    ("version", "name", "integrated"),
    [
        (110501, "gfx1151", True),
        (110500, "gfx1150", True),
        (110502, "gfx1152", True),
        (110000, "gfx1100", False),
        (110001, "gfx1101", False),
        (110002, "gfx1102", False),
        (110003, "gfx1103", True),
        (120001, "gfx1201", False),
        (100300, "gfx1030", False),
        (90010, "gfx90a", False),
        (90012, "gfx90c", True),
        (90400, "gfx940", True),
        (90402, "gfx942", False),
    ],
)
def test_gfx_targets(version: int, name: str, integrated: bool) -> None:
    target = gfx.decode(version)
    assert target is not None
    assert (target.name, target.integrated) == (name, integrated)
    assert target.strix_halo is (name == "gfx1151")


def test_gfx_names_the_chips() -> None:
    assert "Strix Halo" in gfx.decode(110501).label  # type: ignore[union-attr]
    assert "Strix Point" in gfx.decode(110500).label  # type: ignore[union-attr]  # errata 3: not Strix Halo
    assert "Krackan" in gfx.decode(110502).label  # type: ignore[union-attr]
    unknown = gfx.decode(110507)
    assert unknown is not None and unknown.name == "gfx1157" and unknown.chip == ""
    for bad in (0, -1, 99999999, 11, 111600):
        assert gfx.decode(bad) is None
    assert gfx.strix_halo_model(40) == "Radeon 8060S" and gfx.strix_halo_model(32) == "Radeon 8050S"
    assert gfx.strix_halo_model(None) is None


def test_override_spelling() -> None:
    assert gfx.override_for("gfx1151") == "11.5.1"
    assert gfx.override_for("gfx1100") == "11.0.0"
    assert gfx.override_for("gfx90a") == "9.0.10"
    assert gfx.override_for("nvidia") is None


@pytest.mark.parametrize(
    ("text", "triple", "suffix"),
    [
        ("6.17.0-14-generic\n", (6, 17, 0), "-14-generic"),
        ("6.18.5-200.fc43.x86_64", (6, 18, 5), "-200.fc43.x86_64"),
        ("6.16", (6, 16, 0), ""),
        ("6.14.0-1018-oem", (6, 14, 0), "-1018-oem"),
    ],
)
def test_kernel_versions(text: str, triple: tuple[int, int, int], suffix: str) -> None:
    v = parse.parse_kernel_version(text)
    assert v is not None and v.triple == triple and v.suffix == suffix


def test_kernel_garbage_and_ubuntu_abi() -> None:
    for bad in (None, "", "\x00garbage", "linux", "v6.1"):
        assert parse.parse_kernel_version(bad) is None
    oem = parse.parse_kernel_version("6.14.0-1018-oem")
    assert oem is not None and parse.ubuntu_abi(oem) == 1018
    fedora = parse.parse_kernel_version("6.18.5-200.fc43.x86_64")
    assert fedora is not None and parse.ubuntu_abi(fedora) is None  # not an Ubuntu ABI number


def test_meminfo_and_properties() -> None:
    mem = parse.parse_meminfo("MemTotal:       131754112 kB\nHugePages_Total:       0\nbad line\nX: y kB\n")
    assert mem == {"MemTotal": 131754112 * KiB, "HugePages_Total": 0}
    props = parse.parse_properties(
        "gfx_target_version 110501\nvendor_id 0x1002\nname with spaces 1\nx banana\n"
    )
    assert props == {"gfx_target_version": 110501, "vendor_id": 0x1002}
    assert parse.parse_size_bytes("-5") is None and parse.parse_size_bytes("536870912\n") == 512 * MiB


def test_cmdline() -> None:
    cmd = parse.parse_cmdline(
        "BOOT_IMAGE=/vmlinuz ro quiet iommu=pt ttm.pages_limit=1 ttm.pages_limit=2 amd-iommu=off "
        'acpi_osi="Windows 2020" modprobe.blacklist=nouveau,amdgpu -- single'
    )
    assert cmd.get("iommu") == "pt"
    assert cmd.get("ttm.pages_limit") == "2"  # the last value wins, as the kernel does
    assert cmd.get("amd_iommu") == "off"  # '-' and '_' are the same in parameter names
    assert cmd.get("acpi_osi") == "Windows 2020"
    assert cmd.has("quiet") and cmd.get("quiet") == "" and not cmd.has("single")  # after '--' is init's
    assert cmd.values("modprobe.blacklist") == ["nouveau", "amdgpu"]
    assert parse.parse_cmdline('broken "quote').has("broken")


def test_groups_and_os_release() -> None:
    groups = parse.parse_group_file("# c\nrender:x:992:alice,bob\nvideo:x:44:\nbad\nweird:x:x:\n")
    assert groups["render"].gid == 992 and groups["render"].members == ("alice", "bob")
    assert groups["video"].members == ()
    assert set(groups) == {"render", "video"}
    osr = parse.parse_os_release('ID=ubuntu\nID_LIKE="debian"\nPRETTY_NAME="Ubuntu 24.04 LTS"\n#x=y\n')
    assert osr == {"ID": "ubuntu", "ID_LIKE": "debian", "PRETTY_NAME": "Ubuntu 24.04 LTS"}


def test_gids() -> None:
    assert parse.gid_ipv4("0000:0000:0000:0000:0000:ffff:0a00:0101") == "10.0.1.1"
    assert parse.gid_ipv4("0000:0000:0000:0000:0000:FFFF:C0A8:0A05\n") == "192.168.10.5"
    assert parse.gid_ipv4("fe80:0000:0000:0000:0e42:a1ff:feb7:5e2c") is None
    assert parse.gid_ipv4("not:a:gid") is None
    assert parse.gid_is_empty("0000:0000:0000:0000:0000:0000:0000:0000") and parse.gid_is_empty(None)
    assert not parse.gid_is_empty("fe80:0000:0000:0000:0e42:a1ff:feb7:5e2c")
    assert parse.port_state("4: ACTIVE\n") == "ACTIVE" and parse.port_state("\xff\xfe") is None


@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    parse.parse_meminfo(text)
    parse.parse_properties(text)
    parse.parse_cmdline(text)
    parse.parse_group_file(text)
    parse.parse_os_release(text)
    parse.parse_kernel_version(text)
    parse.parse_version(text)
    parse.gid_ipv4(text)
    parse.port_state(text)


def test_installed_ram_from_what_the_os_sees() -> None:
    assert installed_ram(131_754_112 * KiB, 512 * MiB) == 128 * GiB
    assert installed_ram(32_182_372 * KiB, 96 * GiB) == 128 * GiB  # big carve-out, same machine
    assert installed_ram(65_346_560 * KiB, 512 * MiB) == 64 * GiB
    assert installed_ram(7 * GiB, 0) == 8 * GiB


def test_gpu_memory_is_never_counted_twice() -> None:
    # 96 GiB carve-out + 15 GiB GTT on 31 GiB of OS RAM: 111 GiB, not 96 + 15 + 31.
    assert gpu_addressable(96 * GiB, 15 * GiB, 31 * GiB) == 111 * GiB
    # a GTT limit above the OS's RAM is capped by that RAM
    assert gpu_addressable(512 * MiB, 122 * GiB, 62 * GiB) == 512 * MiB + 62 * GiB
