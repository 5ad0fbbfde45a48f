"""One table of ROCm environment advice: what ``halo deploy`` writes is what ``halo doctor`` expects.

Seen before: deploy wrote ``HSA_XNACK=1`` ("needed for unified memory") while doctor said it has no effect
on gfx1151. Both now read ``doctor/rocm_env.py``; these tests compare the two commands' real output.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from haloserve.deploy import load_spec_text, render_files
from tests.doctor.conftest import FIXTURES, edit_manifest, results_for

SPEC = """
rocm_version: "{version}"
nodes:
  - {{name: a, address: 10.1.0.1, ram: 128}}
models:
  - {{name: small, source: qwen3-4b, file: small.gguf, nodes: [a], ctx: 4096}}
"""


def deploy_env(version: str) -> dict[str, str]:
    """The ROCm variables ``halo deploy`` puts in a llama.cpp service for ROCm ``version``."""
    files = render_files(load_spec_text(SPEC.format(version=version), "spec.yaml").spec)
    env = yaml.safe_load(files["nodes/a/docker-compose.yml"].text)["services"]["small"]["environment"]
    return {k: str(v) for k, v in env.items() if not k.startswith(("LLAMA_ARG_", "MODEL"))}


def doctor_expects(root: Path) -> tuple[dict[str, str], set[str], str]:
    """(variables to set, variables to leave unset, ROCm version) from doctor's ``rocm.env`` check."""
    expected = results_for(root, "rocm.env")["rocm.env"].expected
    m = re.fullmatch(r"as halo deploy writes for ROCm ([\d.]+): (.*); unset: (.*)", expected)
    assert m, expected
    wanted = dict(pair.split("=", 1) for pair in m.group(2).split(", "))
    return wanted, set(m.group(3).split(", ")), m.group(1)


@pytest.mark.parametrize("fixture", ["strix-halo-128", "seed-misconfigured"])  # ROCm 7.2.1 and 6.4.1
def test_deploy_writes_what_doctor_expects(fixture: str) -> None:
    wanted, unset, version = doctor_expects(FIXTURES / fixture)
    env = deploy_env(version)
    assert {k: v for k, v in env.items() if k in wanted or k in unset} == wanted
    assert not unset & set(env)
    assert "HSA_XNACK" in unset and "HSA_XNACK" not in env  # gfx1151 has no XNACK
    override = env.get("HSA_OVERRIDE_GFX_VERSION")
    assert override == ("11.0.0" if version.startswith("6.4") else None)


def test_doctor_says_why_xnack_is_not_needed(fixture_copy: object) -> None:
    root = fixture_copy("strix-halo-128")  # type: ignore[operator]
    edit_manifest(root, lambda data: data["facts"]["env"].update({"HSA_XNACK": "1"}))
    notes = results_for(root, "rocm.env")["rocm.env"].notes
    assert any("HSA_XNACK has no effect on gfx1151" in n and "AMDGPUUsage" in n for n in notes)
