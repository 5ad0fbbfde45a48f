"""One TTM number: ``halo doctor``, ``halo plan`` and ``halo deploy`` print the same ``ttm.pages_limit``.

Each command is run the way a user runs it (doctor on a captured tree whose RAM and carve-out are
changed, plan through its CLI with ``--json``, deploy rendering a spec's ``host-setup.sh``), over
RAM sizes from 32 to 128 GB and the carve-outs doctor accepts.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haloserve.cli import main
from haloserve.deploy import load_spec_text, render_files
from haloserve.doctor import diagnose, facts_for, open_root, options_for
from haloserve.units import GiB, KiB, MiB

FIXTURE = Path(__file__).resolve().parents[1] / "doctor" / "fixtures" / "strix-halo-128"
VRAM = "sys/devices/pci0000:00/0000:00:08.1/0000:c5:00.0/mem_info_vram_total"
PAGES = re.compile(r"ttm\.pages_limit=(\d+)(?: and)? ttm\.page_pool_size=(\d+)")


def doctor_pages(ram: int, carveout: int, hidden: int) -> int:
    """The pages ``halo doctor``'s ttm check recommends on a box with this RAM and carve-out."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "box"
        shutil.copytree(FIXTURE, root, symlinks=True)
        meminfo = root / "proc/meminfo"
        lines = meminfo.read_text().splitlines()
        # the kernel hides firmware reservations: MemTotal is a little under RAM - carve-out
        lines[0] = f"MemTotal:       {(ram - carveout - hidden) // KiB} kB"
        meminfo.write_text("\n".join(lines) + "\n")
        (root / VRAM).write_text(f"{carveout}\n")
        opened = open_root(root)
        (result,) = diagnose(opened, facts_for(opened), options_for(opened), ("ttm",))
    match = PAGES.search(result.expected)
    assert match and match.group(1) == match.group(2), result.expected
    return int(match.group(1))


def plan_pages(ram: int, carveout: int) -> int:
    """The pages ``halo plan --json`` prints for nodes of this RAM and carve-out."""
    out = io.StringIO()
    argv = ["plan", "qwen3-4b", "--ram", f"{ram // MiB}MiB", "--carveout", f"{carveout // MiB}MiB", "--json"]
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    ttm = json.loads(out.getvalue())["ttm"]
    assert PAGES.search(ttm["grub_line"])
    return int(ttm["pages_limit"])


def deploy_pages(ram: int, carveout: int) -> int:
    """The pages ``halo deploy``'s rendered ``host-setup.sh`` writes for such a node."""
    spec = f"""
nodes:
  - {{name: a, address: 10.1.0.1, ram: {ram // MiB}MiB, carveout: {carveout // MiB}MiB}}
models:
  - {{name: small, source: qwen3-4b, file: small.gguf, nodes: [a], ctx: 4096}}
"""
    files = render_files(load_spec_text(spec, "spec.yaml").spec)
    match = PAGES.search(files["nodes/a/host-setup.sh"].text)
    assert match and match.group(1) == match.group(2)
    return int(match.group(1))


@settings(max_examples=30, deadline=None)
@given(
    ram_gib=st.integers(min_value=4, max_value=16).map(lambda n: n * 8),  # 32 ... 128 GB in module steps
    carveout=st.sampled_from([512 * MiB, GiB, 2 * GiB, 4 * GiB]),
    hidden=st.integers(min_value=0, max_value=2 * GiB // KiB).map(lambda k: k * KiB),
)
@pytest.mark.slow
def test_doctor_plan_and_deploy_recommend_the_same_ttm_limit(
    ram_gib: int, carveout: int, hidden: int
) -> None:
    ram = ram_gib * GiB
    pages = plan_pages(ram, carveout)
    assert doctor_pages(ram, carveout, hidden) == pages
    assert deploy_pages(ram, carveout) == pages
    # what Linux sees less the 8 GiB reserve, in 4 KiB pages, rounded down to a 1/2 GiB step
    assert pages == (ram - carveout - 8 * GiB) // (GiB // 2) * (GiB // 2) // (4 * KiB)


@pytest.mark.slow
def test_the_issue_numbers() -> None:
    """128 GB: 119.5 GiB (31,326,208 pages); 64 GB: 55.5 GiB (14,548,992), in all three commands."""
    for ram, pages in ((128 * GiB, 31_326_208), (64 * GiB, 14_548_992)):
        found = (doctor_pages(ram, 512 * MiB, 0), plan_pages(ram, 512 * MiB), deploy_pages(ram, 512 * MiB))
        assert found == (pages, pages, pages)
