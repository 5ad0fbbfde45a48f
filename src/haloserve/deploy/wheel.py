"""The haloserve wheel the rendered image installs: built from this very checkout by ``halo deploy render``.

haloserve is on no package index, so the image cannot ``pip install haloserve``; the render puts a wheel of
the running source tree into the build context (``docker/wheels/``) and the Dockerfile copies it in.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import haloserve
from haloserve.errors import CommandError

WHEEL_DIR = "wheels"  # inside the build context (docker/)


def default_wheel_name() -> str:
    """The file name of the wheel of the installed version (what :func:`build_wheel` produces)."""
    return f"haloserve-{haloserve.__version__}-py3-none-any.whl"


def source_tree() -> Path:
    """The checkout this package runs from (``pyproject.toml`` beside ``src/``)."""
    root = Path(haloserve.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "haloserve"' not in pyproject.read_text(encoding="utf-8"):
        raise CommandError(
            f"no haloserve source tree at {root} to build the image's wheel from (haloserve is installed "
            "from a package): set images.haloserve_package to a pip requirement or URL"
        )
    return root


def build_wheel(out: Path, root: Path | None = None) -> Path:
    """Build the wheel of ``root`` (default: :func:`source_tree`) into ``out``; returns its path.

    The sources are copied to a scratch directory first, so the build leaves no ``build/`` or
    ``*.egg-info`` in the checkout; without network, the installed setuptools builds it.
    """
    root = root or source_tree()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="halo-wheel-") as tmp:
        scratch = Path(tmp) / "src"
        scratch.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, scratch / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(root / "src" / "haloserve", scratch / "src" / "haloserve", ignore=ignore)
        built = Path(tmp) / "wheel"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q", "-w", str(built)]
        if importlib.util.find_spec("setuptools") is not None:
            cmd.append("--no-build-isolation")
        done = subprocess.run([*cmd, str(scratch)], capture_output=True, text=True, timeout=600, check=False)
        wheels = sorted(built.glob("haloserve-*.whl")) if built.is_dir() else []
        if done.returncode or len(wheels) != 1:
            last = (done.stderr.strip().splitlines() or ["no wheel produced"])[-1]
            raise CommandError(
                f"building the haloserve wheel failed: {last} (or set images.haloserve_package to a pip "
                "requirement or URL)"
            )
        target = out / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target
