"""Fixture trees and helpers for the doctor tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haloserve.doctor import CheckResult, diagnose, facts_for, open_root, options_for

FIXTURES = Path(__file__).parent / "fixtures"
collect_ignore = ["fixtures"]  # captured trees, not tests (some hold deliberately broken symlinks)
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def results_for(root: str | Path, *checks: str, **options: Any) -> dict[str, CheckResult]:
    """Run doctor on a root and index the results by check id."""
    opened = open_root(root)
    return {r.id: r for r in diagnose(opened, facts_for(opened), options_for(opened, **options), checks)}


def write_tree(base: Path, files: dict[str, str], manifest: dict[str, Any] | None = None) -> Path:
    """Write a small root: ``files`` maps paths to contents; ``manifest`` becomes halo-doctor.json."""
    base.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if manifest is not None:
        (base / "halo-doctor.json").write_text(json.dumps(manifest))
    return base


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Callable[[str], Path]:
    """A writable copy of a checked-in fixture tree (symlinks kept as symlinks)."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(FIXTURES / name, dest, symlinks=True)
        return dest

    return copy


def edit_manifest(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Load, change and rewrite a tree's halo-doctor.json."""
    path = root / "halo-doctor.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
