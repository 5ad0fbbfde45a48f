"""Render a deploy spec into files: Jinja2 templates (package data) over the layout of the spec.

``render_files`` is pure (spec in, ``{path: RenderedFile}`` out) so tests compare it with golden files;
``write_files`` is the thin I/O shell that writes them, marks scripts executable and removes files a
previous render wrote that are no longer part of the deployment.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from haloserve.deploy import services as svc
from haloserve.deploy.drift import SPEC_COPY
from haloserve.deploy.fit import FitReport, check_fit
from haloserve.deploy.gateway_config import CONFIG_PATH, NOTES
from haloserve.deploy.layout import Layout, NodePlan, build_layout
from haloserve.deploy.quoting import FILTERS
from haloserve.deploy.rocm import gpu_targets, parse_rocm, rocm_env
from haloserve.deploy.spec import DeploySpec
from haloserve.deploy.wheel import WHEEL_DIR, build_wheel, default_wheel_name
from haloserve.errors import CommandError
from haloserve.units import GiB, fmt_bytes

MARKER = ".halo-deploy"
SPEC_ABOUT = "the spec these files were rendered from (`halo deploy check` renders it again to compare)"
WHEEL_ABOUT = "haloserve, built from the checkout that rendered these files (the haloserve image installs it)"


@dataclass(frozen=True)
class RenderedFile:
    """One output file: where it goes, its text, whether it is executable, and what it is for (``data``:
    the bytes of a binary file such as the haloserve wheel, written instead of ``text``)."""

    path: str
    text: str
    executable: bool
    about: str
    data: bytes | None = None


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("haloserve.deploy", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    env.globals["fmt"] = fmt_bytes
    return env


class _Renderer:
    def __init__(self, spec: DeploySpec, layout: Layout, wheel: str) -> None:
        self.env = _environment()
        self.spec, self.layout = spec, layout
        self.images = svc.images(spec)
        self.files: dict[str, RenderedFile] = {}
        self.common: dict[str, Any] = {
            "spec": spec,
            "images": self.images,
            "gpu_targets": gpu_targets(spec.rocm_version),
            "rocm_env": rocm_env(spec.rocm_version),
            "vllm_env": rocm_env(spec.rocm_version, llama=False),
            "gpu_env": svc.gpu_env(spec),
            "config_path": CONFIG_PATH,
            "wheel_path": f"{WHEEL_DIR}/{wheel}",
        }

    def add(self, path: str, template: str, about: str, **context: Any) -> None:
        text = self.env.get_template(template).render(**self.common, **context)
        text = text.rstrip("\n") + "\n"
        self.files[path] = RenderedFile(path, text, path.endswith(".sh"), about)

    def docker(self) -> None:
        major, minor, _ = parse_rocm(self.spec.rocm_version)
        vulkan = f"{self.spec.images.registry}halo-llamacpp-vulkan:{self.spec.images.tag}"
        self.add(
            "docker/llamacpp-rocm.Dockerfile", "llamacpp-rocm.Dockerfile.j2", "llama.cpp, HIP for gfx1151"
        )
        self.add(
            "docker/llamacpp-vulkan.Dockerfile",
            "llamacpp-vulkan.Dockerfile.j2",
            "llama.cpp, Vulkan (RADV)",
            images_vulkan=vulkan,
        )
        self.add(
            "docker/vllm-rocm.Dockerfile",
            "vllm-rocm.Dockerfile.j2",
            "minimal vLLM for ROCm gfx1151",
            torch_rocm=f"{major}.{minor}",
        )
        self.add("docker/haloserve.Dockerfile", "haloserve.Dockerfile.j2", "halo serve / gateway / doctor")
        self.add("docker/rocm-test.Dockerfile", "rocm-test.Dockerfile.j2", "ROCm test image")
        self.add("docker/verify-rocm.sh", "verify-rocm.sh.j2", "GPU checks run by the test image")
        self.add("docker/hip-matmul.cpp", "hip-matmul.cpp.j2", "HIP matmul checked against the CPU")
        used = {s.image.dockerfile: s.image for np_ in self.layout.nodes for s in np_.services}
        self.add(
            "docker/build-images.sh",
            "build-images.sh.j2",
            "builds (and pushes) the images in use",
            build_images=list(used.values()),
        )

    def node(self, np_: NodePlan) -> None:
        base = f"nodes/{np_.node.name}"
        self.add(
            f"{base}/docker-compose.yml", "docker-compose.yml.j2", f"services of {np_.node.name}", np=np_
        )
        self.add(f"{base}/.env", "dotenv.j2", "model files and group ids (switch models here)", np=np_)
        ttm = np_.memory.ttm
        self.add(
            f"{base}/host-setup.sh",
            "host-setup.sh.j2",
            "GRUB TTM limit, groups, network, doctor",
            node=np_.node,
            ttm=ttm,
            ttm_gib=f"{ttm.target_bytes / GiB:g}",
            halo_image=self.images["halo"].name,
            swarm_engines=np_.swarm_engines if self.layout.stack else 0,
        )
        if np_.node.rdma:
            self.add(
                f"{base}/60-halo-rdma.yaml",
                "netplan.yaml.j2",
                "netplan: RDMA interface, MTU 9000",
                node=np_.node,
            )
        if np_.gateway:
            self.add(
                f"{base}/gateway.yaml",
                "gateway.yaml.j2",
                "halo gateway configuration",
                config=np_.gateway,
                notes=NOTES,
            )
        for script in np_.scripts:
            self.add(
                f"{base}/scripts/{script.name}",
                script.template,
                script.about,
                **script.context,
            )

    def swarm(self) -> None:
        split = [p.model.name for p in self.layout.fit.placements if p.model.split != "none"]
        keys_dir = self.spec.gateway.keys_db.rsplit("/", 1)[0] if self.spec.gateway else "/var/lib/halo"
        self.add(
            "swarm/stack.yml",
            "stack.yml.j2",
            "Docker Swarm stack",
            stack=self.layout.stack,
            stack_gateway=self.layout.stack_gateway,
            split_models=split,
            keys_dir=keys_dir or "/",
        )
        if self.layout.stack_gateway:
            self.add(
                "swarm/gateway.yaml",
                "gateway.yaml.j2",
                "gateway configuration for the stack",
                config=self.layout.stack_gateway,
                notes=NOTES,
            )


def render_files(
    spec: DeploySpec, fit: FitReport | None = None, wheel: str | None = None
) -> dict[str, RenderedFile]:
    """Every text file of the deployment (fit-checked first unless ``fit`` is given); ``wheel`` names the
    haloserve wheel the image installs from ``docker/wheels/`` (:func:`with_wheel` adds its bytes)."""
    fit = fit or check_fit(spec)
    layout = build_layout(spec, fit)
    r = _Renderer(spec, layout, wheel or default_wheel_name())
    r.docker()
    for np_ in layout.nodes:
        r.node(np_)
    has_stack = len(spec.nodes) > 1 and bool(layout.stack)
    if has_stack:
        r.swarm()
    listing = [RenderedFile(p, "", False, f.about) for p, f in r.files.items()]
    # written by deployment_files beside these (`halo deploy render`)
    listing.append(RenderedFile(SPEC_COPY, "", False, SPEC_ABOUT))
    if not spec.images.haloserve_package:
        listing.append(RenderedFile(f"docker/{r.common['wheel_path']}", "", False, WHEEL_ABOUT))
    listing.sort(key=lambda f: f.path)
    has_split = any(p.model.split != "none" for p in fit.placements)
    r.add(
        "README.md",
        "README.md.j2",
        "what is here and in which order to use it",
        layout=layout,
        files=listing,
        has_split=has_split,
        has_stack=has_stack,
    )
    return dict(sorted(r.files.items()))


def deployment_files(spec: DeploySpec, fit: FitReport, source: str) -> dict[str, RenderedFile]:
    """What `halo deploy render` writes: :func:`render_files`, the haloserve wheel built from this checkout
    (unless the spec names ``images.haloserve_package``), so the build context installs exactly the code
    that rendered it, and the spec's ``source`` text, which `halo deploy check` renders again."""
    files = {SPEC_COPY: RenderedFile(SPEC_COPY, source, False, SPEC_ABOUT)}
    if spec.images.haloserve_package:
        return dict(sorted({**files, **render_files(spec, fit)}.items()))
    with tempfile.TemporaryDirectory(prefix="halo-deploy-") as tmp:
        built = build_wheel(Path(tmp))
        data = built.read_bytes()
    path = f"docker/{WHEEL_DIR}/{built.name}"
    files[path] = RenderedFile(path, "", False, WHEEL_ABOUT, data)
    return dict(sorted({**files, **render_files(spec, fit, built.name)}.items()))


def write_files(files: dict[str, RenderedFile], out: Path, force: bool = False) -> list[str]:
    """Write ``files`` under ``out``; returns the stale files of a previous render that were removed."""
    marker = out / MARKER
    if out.exists() and any(out.iterdir()) and not marker.exists() and not force:
        raise CommandError(f"{out} is not empty and was not written by `halo deploy render` (use --force)")
    previous = marker.read_text(encoding="utf-8").split() if marker.exists() else []
    removed = []
    for rel in previous:
        if rel not in files and (out / rel).is_file():
            (out / rel).unlink()
            removed.append(rel)
    for rel, f in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if f.data is not None:
            path.write_bytes(f.data)
        else:
            path.write_text(f.text, encoding="utf-8")
        path.chmod(0o755 if f.executable else 0o644)
    marker.write_text("\n".join(files) + "\n", encoding="utf-8")
    return removed
