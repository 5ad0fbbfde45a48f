"""Images that build (issue 12 item 9): the haloserve image installs a wheel of this very checkout, which
`halo deploy render` builds into the build context; no package index is needed for haloserve itself."""

from __future__ import annotations

import io
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

import haloserve
from haloserve.cli import main
from haloserve.deploy import load_spec_text, render_files
from haloserve.deploy.examples import example_spec
from haloserve.deploy.wheel import build_wheel
from haloserve.errors import CommandError

SRC = Path(haloserve.__file__).resolve().parent

pytestmark = pytest.mark.process


def _instructions(text: str) -> list[tuple[str, str]]:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_this_checkout(wheel: Path) -> None:
    assert wheel.name == f"haloserve-{haloserve.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"haloserve-{haloserve.__version__}.dist-info/METADATA").decode()
        entry = z.read(f"haloserve-{haloserve.__version__}.dist-info/entry_points.txt").decode()
        # byte for byte the code of this checkout, package data included
        for rel in ("deploy/wheel.py", "deploy/templates/haloserve.Dockerfile.j2", "planner/catalog.yaml"):
            assert z.read(f"haloserve/{rel}") == (SRC / rel).read_bytes(), rel
    assert "Name: haloserve" in metadata and "halo = haloserve.cli:main" in entry
    assert "haloserve/deploy/compose-spec.json" in names
    assert not any("__pycache__" in n for n in names)


def test_the_dockerfile_copies_and_installs_the_wheel(wheel: Path) -> None:
    doc = load_spec_text(example_spec(1))
    text = render_files(doc.spec, wheel=wheel.name)["docker/haloserve.Dockerfile"].text
    steps = _instructions(text)
    copies = [shlex.split(v) for k, v in steps if k == "COPY"]
    assert [f"wheels/{wheel.name}", f"/tmp/wheels/{wheel.name}"] in copies
    runs = [v for k, v in steps if k == "RUN"]
    installs = [r for r in runs if f"pip install --no-cache-dir /tmp/wheels/{wheel.name}" in r]
    assert len(installs) == 1
    # the COPY comes before the install, and nothing installs haloserve from an index
    assert steps.index(("RUN", installs[0])) > [k for k, _ in steps].index("COPY")
    assert "HALOSERVE_PACKAGE" not in text


def test_render_puts_the_wheel_in_the_build_context(tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text(example_spec(1))
    out = tmp_path / "out"
    assert main(["deploy", "render", str(spec), "-o", str(out)]) == 0
    wheels = list((out / "docker/wheels").glob("haloserve-*.whl"))
    assert len(wheels) == 1 and zipfile.is_zipfile(wheels[0])
    assert f"docker/wheels/{wheels[0].name}" in (out / ".halo-deploy").read_text().split()
    # every COPY source of every Dockerfile exists in the context compose and build-images.sh use
    compose = yaml.safe_load((out / "nodes/halo1/docker-compose.yml").read_text())
    contexts = {(out / "nodes/halo1" / s["build"]["context"]).resolve() for s in compose["services"].values()}
    assert contexts == {(out / "docker").resolve()}
    for dockerfile in (out / "docker").glob("*.Dockerfile"):
        for kind, value in _instructions(dockerfile.read_text()):
            words = shlex.split(value)
            if kind == "COPY" and not words[0].startswith("--from"):
                for source in words[:-1]:
                    assert (out / "docker" / source).exists(), (dockerfile.name, source)
    assert (out / "spec.yaml").read_text() == spec.read_text()


def test_a_named_package_replaces_the_wheel(tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    url = "git+https://example.org/haloserve.git@v0.1.0#egg=haloserve"
    spec.write_text(example_spec(1) + f"  haloserve_package: {url}\n")
    out = tmp_path / "out"
    assert main(["deploy", "render", str(spec), "-o", str(out)]) == 0
    assert not (out / "docker/wheels").exists()
    text = (out / "docker/haloserve.Dockerfile").read_text()
    args = [shlex.split(v)[0] for k, v in _instructions(text) if k == "ARG" and v.startswith("HALOSERVE")]
    assert args == [f"HALOSERVE_PACKAGE={url}"]
    assert "wheels/" not in text.split("# llama-cpp-python")[1]


def test_a_failed_build_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "tree"
    (broken / "src" / "haloserve").mkdir(parents=True)
    (broken / "src" / "haloserve" / "__init__.py").write_text("")
    (broken / "pyproject.toml").write_text('[project\nname = "haloserve"\n')  # not TOML
    with pytest.raises(CommandError) as err:
        build_wheel(tmp_path / "out", broken)
    assert err.value.message.startswith("building the haloserve wheel failed: ")
    assert "\n" not in err.value.message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
