"""halo serve against llama-server on a GPU: the same llama.cpp built for the local GPU, synthetic models.

1. Finds the toolchain: CUDA (``nvcc``), ROCm (``hipcc``, with the gfx target from ``rocminfo`` or
   ``amdgpu-arch``) or Vulkan (``glslc``).
2. Builds the llama.cpp that llama-cpp-python vendors (its sdist) with that backend, as shared libraries,
   RPC on and OpenMP off, plus llama-server, into ``benchmarks/.work/gpu/<backend>/`` (git-ignored).
3. Points llama-cpp-python at that build with ``LLAMA_CPP_LIB_PATH`` (halo serve's environment only).
4. Writes the synthetic models (Llama-3 8B and 1B shapes, Q4_0, 128,256-token vocabulary).
5. Runs halo serve, llama-server and llama-server ``--backend-sampling`` at c=1, 4, 16, 32 with
   ``-ngl 999 -fa on -np 16 -c 16384``, ~200-token prompts, 128 output tokens with ``ignore_eos``,
   greedy, medians of ``--rounds``; at c=16 it also reads each server's engine-thread CPU time from
   /proc/<pid>/task/<tid>/stat (halo serve: the ``halo-engine`` thread; llama-server: the busiest
   thread, its slot loop) and divides it by the tokens generated (one token per sequence per step).
6. Prints the table and, with ``--write``, puts it in BENCHMARKS.md's GPU section, naming the GPU.

``--smoke`` runs the same path end to end on the CPU backend with the tiny shape and builds nothing: it
uses the installed llama-cpp-python and ``benchmarks/.work/llama-server`` from setup_peers.sh if it is
there (skipped otherwise), c=2 only, one round, 8 tokens. It checks the harness, not a GPU.

  .venv/bin/python benchmarks/gpu_bench.py --write            # on a machine with a GPU toolchain
  .venv/bin/python benchmarks/gpu_bench.py --smoke            # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench as sb

from haloserve.testing.remote import free_port
from haloserve.testing.synth_gguf import write_gguf

HERE = sb.HERE
WORK = sb.WORK / "gpu"
MARKS = ("<!-- gpu:start -->", "<!-- gpu:end -->")
LEVELS = [1, 4, 16, 32]
SLOTS, CTX = 16, 16384
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Toolchain:
    """A GPU backend this machine can build: its name, cmake flags and what to call the device."""

    backend: str  # cuda, hip, vulkan, cpu
    cmake: list[str] = field(default_factory=list)
    device: str = ""


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def find_toolchain() -> Toolchain | None:
    """CUDA, then ROCm/HIP, then Vulkan: the first whose compiler is on PATH (or in its usual place)."""
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )
    if nvcc:
        gpu = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).strip().splitlines()
        return Toolchain(
            "cuda", ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}"], gpu[0] if gpu else "CUDA GPU"
        )
    hipcc = shutil.which("hipcc") or ("/opt/rocm/bin/hipcc" if Path("/opt/rocm/bin/hipcc").exists() else None)
    if hipcc:
        arch = _run(["amdgpu-arch"]).split() or [
            w for w in _run(["rocminfo"]).split() if w.startswith("gfx") and w != "gfx000"
        ]
        gfx = arch[0] if arch else "gfx1151"  # Strix Halo's, when nothing can be asked
        name = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in _run(["rocminfo"]).splitlines()
                if "Marketing Name" in ln and "CPU" not in ln
            ),
            gfx,
        )
        return Toolchain("hip", ["-DGGML_HIP=ON", f"-DAMDGPU_TARGETS={gfx}", f"-DGPU_TARGETS={gfx}"], name)
    if shutil.which("glslc"):
        name = next(
            (
                ln.split("=", 1)[1].strip()
                for ln in _run(["vulkaninfo", "--summary"]).splitlines()
                if "deviceName" in ln
            ),
            "Vulkan GPU",
        )
        return Toolchain("vulkan", ["-DGGML_VULKAN=ON"], name)
    return None


def vendored_source() -> Path:
    """The llama.cpp tree of the installed llama-cpp-python version's sdist (downloaded once)."""
    import importlib.metadata as md

    ver = md.version("llama-cpp-python")
    for base in (WORK, sb.WORK):
        src = base / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
        if src.is_dir():
            return src
    sdist = WORK / "sdist" / f"llama_cpp_python-{ver}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={ver}",
                "-d",
                str(sdist.parent),
            ],
            check=True,
        )
    with tarfile.open(sdist) as tar:
        tar.extractall(WORK, filter="data")
    return WORK / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"


def build(tc: Toolchain, jobs: int) -> tuple[Path, Path]:
    """Build libllama (+ ggml backends) and llama-server for ``tc``; the library folder and the server."""
    out = WORK / tc.backend
    lib, server = out / "lib", out / "llama-server"
    if (lib / "libllama.so").exists() and server.exists():
        return lib, server
    src, bdir = vendored_source(), out / "build"
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DGGML_RPC=ON",
        "-DGGML_OPENMP=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN",
        *tc.cmake,
    ]
    subprocess.run(["cmake", "-S", str(src), "-B", str(bdir), *flags], check=True)
    subprocess.run(
        ["cmake", "--build", str(bdir), "--target", "llama", "llama-server", "-j", str(jobs)], check=True
    )
    lib.mkdir(parents=True, exist_ok=True)
    for so in bdir.rglob("*.so*"):  # libllama, libggml, libggml-base and the backends, next to each other
        shutil.copy2(so, lib / so.name)
    shutil.copy2(bdir / "bin" / "llama-server", server)
    return lib, server


def synth_models(names: list[str], folder: Path, **overrides: Any) -> list[Path]:
    """The synthetic Q4_0 GGUFs of ``names`` (written once); ``overrides`` change the shape."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shape in names:
        tag = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
        path = folder / f"{shape}{tag}-q4_0-textpad.gguf"
        if not path.exists():
            tmp = path.with_suffix(".part")
            # padding that streams text: a random model picks one of the ~79k padded ids most of the time
            write_gguf(tmp, shape=shape, qtype="q4_0", name=f"synthetic {shape}", pad="text", **overrides)
            tmp.replace(path)
        paths.append(path)
    return paths


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every thread of ``pid``: tid -> (name, seconds)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds of the whole process (every thread, including exited ones)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def engine_thread(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> int:
    """halo serve's ``halo-engine`` thread; else (llama-server, older halo serve) the thread that used
    the most CPU between ``before`` and ``after``: the one that decodes and samples (ggml's workers
    only share the compute)."""
    named = [tid for tid, (name, _) in after.items() if name == "halo-engine"]
    if named:
        return named[0]
    return max(after, key=lambda tid: after[tid][1] - before.get(tid, ("", 0.0))[1])


def cpu_probe() -> Any:
    """A run_one probe: the engine thread's and the whole process's CPU seconds over one level."""
    before: dict[int, Any] = {}

    def probe(proc: subprocess.Popen[bytes], level: int, phase: str) -> tuple[float, float] | None:
        threads, total = thread_cpu(proc.pid), process_cpu(proc.pid)
        if phase == "start":
            before[level] = (threads, total)
            return None
        threads0, total0 = before[level]
        tid = engine_thread(threads0, threads)
        return threads[tid][1] - threads0.get(tid, ("", 0.0))[1], total - total0

    return probe


def commands(model: Path, port: int, server: Path | None, gpu: bool, threads: int) -> dict[str, list[str]]:
    """The servers compared, configured alike."""
    ngl, t = (["999"], str(threads))
    halo = [
        str(Path(sys.executable).with_name("halo")),
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--parallel",
        str(SLOTS),
        "--ctx-size",
        str(CTX),
        "--n-gpu-layers",
        *ngl,
        "--flash-attn",
        "on",
        "--threads",
        t,
        "--log-level",
        "warning",
    ]
    cmds = {"halo serve": halo}
    if server is not None:
        ls = [
            str(server),
            "-m",
            str(model),
            "--port",
            str(port),
            "-np",
            str(SLOTS),
            "-c",
            str(CTX),
            "-ngl",
            *ngl,
            "-fa",
            "on",
            "-t",
            t,
            "-tb",
            t,
            "--log-disable",
            "--no-webui",
        ]
        cmds["llama-server"] = ls
        cmds["llama-server --backend-sampling"] = [*ls, "--backend-sampling"]
    return cmds


def render(results: dict[str, dict[str, dict[str, Any]]], levels: list[int], device: str, note: str) -> str:
    """The GPU section: per model, per server, per level; engine-thread CPU per token at c=16."""
    lines = [f"Device: {device}. {note}", ""]
    for model, med in results.items():
        lines += [
            f"**{model}**",
            "",
            "| server | "
            + " | ".join(f"c={c} tok/s (TPOT ms, TTFT p50 ms)" for c in levels)
            + f" | engine-thread CPU per token at c={16 if 16 in levels else max(levels)} (whole process) |",
            "|---|" + "---|" * (len(levels) + 1),
        ]
        for name, s in med.items():
            cells = [
                f"{lv['output_tok_s']:.0f} ({lv['tpot_p50_ms']:.1f}, {lv['ttft_p50_ms']:.0f})"
                for lv in (s[c] for c in levels)
            ]
            top = max(levels) if 16 not in levels else 16
            cpu, proc = s[top]["cpu_us_per_token"], s[top]["proc_us_per_token"]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {cpu:.0f} us ({proc:.0f} us) |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    """Build, write the models, run the rounds, print (and optionally write) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU backend, tiny shape, nothing built (see above)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["llama3-8b", "llama3-1b"])
    ap.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 2))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--write", action="store_true", help="write the GPU section of BENCHMARKS.md")
    ap.add_argument("--json", type=Path, help="also write the raw rounds here")
    ap.add_argument(
        "--cpu",
        action="store_true",
        help="the CPU backend with --models (nothing built; llama-server from setup_peers.sh): per-step CPU cost",
    )
    ap.add_argument(
        "--layers", type=int, help="repeating layers of the synthetic models (default: the shape's)"
    )
    ap.add_argument("--levels", type=int, nargs="+", help="concurrency levels (default: 1 4 16 32)")
    ap.add_argument("--tokens", type=int, default=128, help="output tokens a request")
    ap.add_argument("--baseline-src", type=Path, help="also run halo serve from this tree's src/ (e.g. main)")
    a = ap.parse_args(argv)
    env = dict(os.environ)
    WORK.mkdir(parents=True, exist_ok=True)
    if a.smoke:
        server = sb.WORK / "llama-server"
        server_or_none = server if server.exists() else None
        device, levels, rounds, out_len = "CPU (smoke run)", [2], 1, 8
        # the tiny shape with Llama 3's 128,256-token vocabulary: halo serve answers with a 128k model
        models = synth_models(["tiny"], WORK / "models-smoke", n_vocab=128256)
        note = (
            "Smoke run: CPU backend, the tiny synthetic shape with a 128,256-token vocabulary, installed llama-cpp-python, nothing built; "
            + ("llama-server from setup_peers.sh." if server_or_none else "llama-server skipped (not built).")
        )
        gpu = False
    elif a.cpu:
        server = sb.WORK / "llama-server"
        server_or_none = server if server.exists() else None
        device, levels, rounds, out_len, gpu = "CPU", a.levels or LEVELS, a.rounds, a.tokens, False
        extra = {"n_layer": a.layers} if a.layers else {}
        models = synth_models(a.models, WORK / "models", **extra)
        note = (
            f"CPU backend ({sb.cpu_model()}, {a.threads} threads), installed llama-cpp-python; -np {SLOTS} "
            f"-c {CTX}; ~200-token prompts, {out_len} output tokens with ignore_eos, greedy; medians of {rounds}"
            f" rounds; 1-minute load average at the end {os.getloadavg()[0]:.1f}. Engine-thread CPU per token:"
            " /proc/<pid>/task/<tid>/stat utime+stime of halo-engine (else the busiest thread: llama-server's"
            " slot loop) over the level, divided by the tokens generated, the whole process's in brackets;"
            " on a CPU backend it includes the thread's share of the compute."
        )
    else:
        tc = find_toolchain()
        if tc is None:
            print(
                "gpu_bench: error: no GPU toolchain found (nvcc, hipcc or glslc); --smoke runs on the CPU",
                file=sys.stderr,
            )
            return 2
        lib, server_or_none = build(tc, a.jobs)
        env["LLAMA_CPP_LIB_PATH"] = str(lib)  # halo serve loads this build, not the wheel's CPU one
        device, levels, rounds, out_len, gpu = f"{tc.device} ({tc.backend})", LEVELS, a.rounds, 128, True
        models = synth_models(a.models, WORK / "models")
        note = (
            f"llama.cpp of the installed llama-cpp-python built for {tc.backend} (shared, RPC on, OpenMP off); "
            f"-ngl 999 -fa on -np {SLOTS} -c {CTX}; ~200-token prompts, {out_len} output tokens with "
            f"ignore_eos, greedy, /v1/completions streamed; medians of {rounds} rounds. Engine-thread CPU: "
            "/proc/<pid>/task/<tid>/stat utime+stime of halo-engine (else the busiest thread: llama-server's "
            "slot loop) over the c=16 level, divided by the tokens generated; the whole process's in brackets."
        )
    body = {"temperature": 0.0}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    raw: dict[str, list[Any]] = {}
    for model in models:
        per_round: list[dict[str, Any]] = []
        for r in range(rounds):
            port = free_port()
            cmds = commands(model, port, server_or_none, gpu, a.threads)
            envs = {name: env for name in cmds}
            if a.baseline_src:
                cmds["halo serve (baseline)"] = cmds["halo serve"]
                envs["halo serve (baseline)"] = {**env, "PYTHONPATH": str(a.baseline_src)}
            names = list(cmds)
            names = names[r % len(names) :] + names[: r % len(names)]
            row = {}
            for name in names:
                row[name] = sb.run_one(
                    name,
                    cmds[name],
                    port,
                    {},
                    seed=r,
                    levels=levels,
                    output_len=out_len,
                    body=body,
                    ignore_eos=True,
                    env=envs[name],
                    work=WORK,
                    probe=cpu_probe(),
                )
                lv = row[name]["levels"]
                print(
                    f"{model.name} round {r + 1} {name:32s} "
                    + "  ".join(f"c={c}: {lv[c]['output_tok_s']:7.1f} tok/s" for c in levels),
                    flush=True,
                )
            per_round.append(row)
        med: dict[str, dict[int, dict[str, Any]]] = {}
        for name in per_round[0]:
            med[name] = {}
            for c in levels:
                got = [rd[name]["levels"][c] for rd in per_round]
                m = {
                    k: statistics.median(g[k] for g in got)
                    for k in ("output_tok_s", "ttft_p50_ms", "tpot_p50_ms")
                }
                m["cpu_us_per_token"] = statistics.median(
                    g["probe"][0] / g["output_tokens"] * 1e6 for g in got
                )
                m["proc_us_per_token"] = statistics.median(
                    g["probe"][1] / g["output_tokens"] * 1e6 for g in got
                )
                med[name][c] = m
        results[model.name] = med
        raw[model.name] = per_round
    text = render(results, levels, device, note)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(raw, indent=1, default=str))
    if a.write:
        sb.write_section(text, *MARKS, "## halo serve vs llama-server on a GPU (benchmarks/gpu_bench.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
