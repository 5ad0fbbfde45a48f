"""Golden files: the example specs render exactly the files under tests/deploy/golden/.

After an intended change: ``HALO_UPDATE_GOLDEN=1 pytest tests/deploy/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from haloserve.deploy import RenderedFile
from haloserve.deploy.examples import example_spec
from tests.deploy.conftest import EXAMPLES, GOLDEN_SPECS

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("HALO_UPDATE_GOLDEN") == "1"


def _expected(name: str, files: dict[str, RenderedFile]) -> dict[str, str]:
    out = {f"files/{p}": f.text for p, f in files.items()}
    out["spec.yaml"] = (
        GOLDEN_SPECS[name] if name in GOLDEN_SPECS else example_spec(EXAMPLES[name], "spec.yaml")
    )
    return out


@pytest.mark.parametrize("name", sorted([*EXAMPLES, *GOLDEN_SPECS]))
def test_example_matches_golden(name: str, rendered: dict[str, dict[str, RenderedFile]]) -> None:
    expected = _expected(name, rendered[name])
    root = GOLDEN / name
    if UPDATE:
        shutil.rmtree(root, ignore_errors=True)
        for rel, text in expected.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
    actual = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    assert sorted(actual) == sorted(expected), "file list changed: HALO_UPDATE_GOLDEN=1 and review"
    for rel, text in expected.items():
        assert actual[rel].read_text(encoding="utf-8") == text, f"{name}/{rel} differs from its golden file"


def test_examples_cover_every_engine_and_split(rendered: dict[str, dict[str, RenderedFile]]) -> None:
    four = rendered["four"]
    paths = set(four)
    assert "swarm/stack.yml" in paths and "swarm/gateway.yaml" in paths
    for end in ("-ray-head.sh", "-ray-worker.sh", "-rpc-worker.sh", "-llama-server.sh"):
        assert any(p.endswith(end) for p in paths), end
    assert "swarm/stack.yml" not in rendered["one"]
