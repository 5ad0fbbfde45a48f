"""halo serve against llama.cpp's llama-server and llama-cpp-python's server, side by side in one run.

Same GGUF (the bundled SmolLM2-135M-Instruct Q4_1), same thread count, same machine, prompts of ~200
tokens and 128 generated tokens, concurrency 1, 4 and 16. Every server generates exactly 128 tokens a
request: the end-of-generation tokens are banned with ``logit_bias`` (-100), which all three servers
honour (``ignore_eos`` is not understood by llama-cpp-python's server). Token counts come from each
server's ``usage`` and are checked. The load generator is ``halo bench`` (vLLM's metric definitions).

Each round starts every server in turn (the order rotates between rounds), drives the three levels,
records the server's peak RSS (VmHWM) and stops it. Medians over the rounds are written to
``BENCHMARKS.md`` between the ``serve`` markers.

Run ``benchmarks/setup_peers.sh`` first (it builds llama-server from the llama.cpp vendored in the
llama-cpp-python sdist and installs llama-cpp-python[server] in its own venv), then
``.venv/bin/python benchmarks/serve_bench.py --rounds 3 --write``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from haloserve.bench.preflight import cpu_model
from haloserve.bench.runner import Runner
from haloserve.bundled import bundled_model_path
from haloserve.config.bench import BenchSettings
from haloserve.engine.llamacpp import cpu_has_amx
from haloserve.testing.remote import free_port

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
ROOT = HERE.parent
MARK_START, MARK_END = "<!-- serve:start -->", "<!-- serve:end -->"
LEVELS = [1, 4, 16]
SLOTS = 16
CTX = SLOTS * 512


# llama-cpp-python's server has no repack switch: on AMX CPUs start it with llama.cpp's extra buffer types
# off, as halo serve and llama-server run there (otherwise it segfaults on its second request).
LCP_NO_REPACK = """
import runpy, sys
import llama_cpp
from llama_cpp import llama_cpp as low
_default = low.llama_model_default_params
def _no_repack():
    p = _default()
    p.use_extra_bufts = False
    return p
low.llama_model_default_params = llama_cpp.llama_model_default_params = _no_repack
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def server_commands(model: Path, port: int, threads: int) -> dict[str, list[str]]:
    """The three servers, configured alike (16 slots of 512 tokens where the server has slots)."""
    t = str(threads)
    # On AMX CPUs llama.cpp's repacked AMX kernels segfault (llama.cpp #20824): halo serve turns repacking
    # off there by itself (--repack auto), llama-server must be told.
    no_repack = ["--no-repack"] if cpu_has_amx() else []
    return {
        "halo serve": [
            str(ROOT / ".venv/bin/halo"),
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--parallel",
            str(SLOTS),
            "--ctx-size",
            str(CTX),
            "--threads",
            t,
            "--log-level",
            "warning",
        ],
        "llama-server": [
            str(WORK / "llama-server"),
            "-m",
            str(model),
            "--port",
            str(port),
            "-np",
            str(SLOTS),
            "-c",
            str(CTX),
            "-t",
            t,
            "-tb",
            t,
            "--log-disable",
            *no_repack,
        ],
        "llama-cpp-python": [
            str(WORK / "lcp-venv/bin/python"),
            *(["-c", LCP_NO_REPACK, "llama_cpp.server"] if no_repack else ["-m", "llama_cpp.server"]),
            "--model",
            str(model),
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            t,
            "--n_threads_batch",
            t,
            # By default it cuts off the running request when a new one arrives; queue them instead.
            "--interrupt_requests",
            "False",
        ],
    }


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until /health answers 200 (or, for a server without /health, /v1/models does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            health = httpx.get(url + "/health", timeout=2).status_code
            if health == 200 or (
                health == 404 and httpx.get(url + "/v1/models", timeout=2).status_code == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server not ready")


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def eog_bias(model: Path) -> dict[str, int]:
    """logit_bias banning every end-of-generation token of the model."""
    from haloserve.engine.llamacpp import LlamaModel

    m = LlamaModel(model)
    try:
        return {str(t): -100 for t in sorted(m.eog_tokens)}
    finally:
        m.close()


@contextlib.contextmanager
def spawned(
    name: str, cmd: list[str], env: dict[str, str] | None = None, work: Path = WORK
) -> Iterator[subprocess.Popen[bytes]]:
    """A process with its output in ``<work>/<name>.log``, stopped (SIGTERM, then SIGKILL) on exit."""
    work.mkdir(exist_ok=True)
    log = open(work / f"{name.replace(' ', '_')}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def drive(
    url: str,
    name: str,
    bias: dict[str, int],
    seed: int,
    levels: list[int],
    *,
    input_len: int = 200,
    output_len: int = 128,
    num_prompts: int | None = None,
    body: dict[str, Any] | None = None,
    ignore_eos: bool = False,
) -> dict[int, dict[str, Any]]:
    """``halo bench`` at each concurrency level; per-level figures (token counts checked).

    ``body`` replaces the sampling fields sent (default: the EOG ban and temperature 0.8)."""
    settings = BenchSettings(
        url=url,
        endpoint="completions",
        workload="synthetic",
        input_len=input_len,
        output_len=output_len,
        concurrency=levels,
        num_prompts=num_prompts,
        warmup=2,
        ignore_eos=ignore_eos,
        extra_body=json.dumps(body if body is not None else {"logit_bias": bias, "temperature": 0.8}),
        seed=seed,
        # One connection per request, as BENCHMARKS.md's figures were measured (model compute
        # dwarfs the client's connection cost here; llama-server closes streamed connections).
        keepalive=False,
        progress=False,
        plots=False,
        label=name,
    )
    result = asyncio.run(Runner(settings).run())
    out = {}
    for level in result.levels:
        m = level.metrics
        assert m.failed == 0, f"{name}: {m.failed} failed requests ({m.first_error})"
        per_req = m.total_output_tokens / max(1, m.completed)
        assert abs(per_req - output_len) < 0.5, f"{name}: {per_req} tokens per request, not {output_len}"
        out[int(level.value or 0)] = {
            "output_tok_s": m.output_throughput,
            "ttft_p50_ms": m.ttft_ms.median,
            "tpot_p50_ms": m.tpot_ms.median,
            "prompt_tokens": m.total_input_tokens / max(1, m.completed),
            "output_tokens": m.total_output_tokens,
            "tokens_source": m.output_tokens_source,
        }
    return out


def run_one(
    name: str,
    cmd: list[str],
    port: int,
    bias: dict[str, int],
    seed: int,
    *,
    levels: list[int] = LEVELS,
    output_len: int = 128,
    body: dict[str, Any] | None = None,
    ignore_eos: bool = False,
    env: dict[str, str] | None = None,
    work: Path = WORK,
    probe: Any = None,
) -> dict[str, Any]:
    """Start one server, drive the levels, stop it; returns per-level figures and peak RSS.

    ``probe``, if given, is called as ``probe(proc, level, phase)`` with phase "start"/"end" around each
    level, and its return value at "end" is kept in that level's figures (gpu_bench.py reads thread
    CPU times)."""
    with spawned(name, cmd, env, work) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        load: dict[str, Any] = {"output_len": output_len, "body": body, "ignore_eos": ignore_eos}
        if probe is None:
            figures = drive(url, name, bias, seed, levels, **load)
        else:
            figures = {}
            for c in levels:
                probe(proc, c, "start")
                got = drive(url, name, bias, seed, [c], **load)
                got[c]["probe"] = probe(proc, c, "end")
                figures.update(got)
        return {"levels": figures, "peak_rss": peak_rss(proc.pid)}


def halo_kv_bytes(model: Path) -> int:
    """KV cache bytes halo serve allocates for this configuration (as llama.cpp reports it)."""
    from haloserve.engine.llamacpp import ContextParams, LlamaContext, LlamaModel

    m = LlamaModel(model)
    ctx = LlamaContext(m, ContextParams(n_ctx=CTX, n_seq_max=SLOTS))
    try:
        return ctx.kv_cache_bytes
    finally:
        ctx.close()
        m.close()


def median_table(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians over rounds, per server, per level and metric."""
    out: dict[str, dict[str, Any]] = {}
    for name in rounds[0]:
        levels = {}
        for c in LEVELS:
            levels[c] = {
                k: statistics.median(r[name]["levels"][c][k] for r in rounds)
                for k in ("output_tok_s", "ttft_p50_ms", "tpot_p50_ms", "prompt_tokens")
            }
        out[name] = {"levels": levels, "peak_rss": statistics.median(r[name]["peak_rss"] for r in rounds)}
    return out


def render(med: dict[str, dict[str, Any]], n_rounds: int, threads: int, model: Path, kv: int) -> str:
    """The BENCHMARKS.md section: ratios first, then absolute numbers, machine named."""
    h, ls, lcp = med["halo serve"], med["llama-server"], med["llama-cpp-python"]

    def lv(s: dict[str, Any], c: int, k: str) -> float:
        return float(s["levels"][c][k])

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    r16_lcp = lv(h, 16, "output_tok_s") / lv(lcp, 16, "output_tok_s")
    r16_ls = lv(h, 16, "output_tok_s") / lv(ls, 16, "output_tok_s")
    r1_dec = lv(ls, 1, "tpot_p50_ms") / lv(h, 1, "tpot_p50_ms")
    r1_ttft = lv(h, 1, "ttft_p50_ms") / lv(ls, 1, "ttft_p50_ms")
    budget = model.stat().st_size + kv + 300 * 2**20
    mib = 2**20
    lines = [
        "| target | ratio | verdict |",
        "|---|---|---|",
        f"| c=16 aggregate tokens/s vs llama-cpp-python server (>= 2x) | {r16_lcp:.2f}x | {verdict(r16_lcp >= 2)} |",
        f"| c=16 aggregate tokens/s vs llama-server (>= 0.9x) | {r16_ls:.2f}x | {verdict(r16_ls >= 0.9)} |",
        f"| c=1 decode tokens/s vs llama-server (>= 0.95x) | {r1_dec:.2f}x | {verdict(r1_dec >= 0.95)} |",
        f"| c=1 TTFT p50 vs llama-server (<= 1.1x) | {r1_ttft:.2f}x | {verdict(r1_ttft <= 1.1)} |",
        f"| peak RSS <= model file + KV cache + 300 MiB ({budget / mib:.0f} MiB) | {h['peak_rss'] / mib:.0f} MiB "
        f"| {verdict(h['peak_rss'] <= budget)} |",
        "",
        "| server | c | output tok/s | TTFT p50 ms | TPOT p50 ms | decode tok/s per stream | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in med.items():
        for c in LEVELS:
            tpot = lv(s, c, "tpot_p50_ms")
            lines.append(
                f"| {name} | {c} | {lv(s, c, 'output_tok_s'):.1f} | {lv(s, c, 'ttft_p50_ms'):.0f} | {tpot:.1f} | "
                f"{1000 / tpot:.1f} | {s['peak_rss'] / mib:.0f} |"
            )
    prompt = lv(h, 1, "prompt_tokens")
    lines += [
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; CPU only. Model: {model.name} "
        f"({model.stat().st_size / mib:.0f} MiB). {threads} threads for every server; 16 slots x 512 tokens "
        f"(halo serve, llama-server; llama-cpp-python serves one request at a time). Prompts ~{prompt:.0f} tokens, "
        f"128 output tokens each (EOG tokens banned with logit_bias; counts checked from usage), "
        f"temperature 0.8, /v1/completions, streaming, load from `halo bench`. Medians of {n_rounds} rounds, "
        f"server order rotated each round. halo serve's KV cache: {kv / mib:.0f} MiB."
        + (
            " AMX CPU: every server runs without llama.cpp's weight repacking (its AMX kernels segfault,"
            " llama.cpp #20824)."
            if cpu_has_amx()
            else ""
        )
        + " halo serve's llama-cpp-python is built without OpenMP (as `make` builds it); llama-cpp-python's"
        " server is the stock pip build (OpenMP), whose decoding in a worker thread libgomp slows down.",
        f"Reproduce: `benchmarks/setup_peers.sh && .venv/bin/python benchmarks/serve_bench.py --rounds {n_rounds} "
        "--write`.",
    ]
    return "\n".join(lines)


def write_section(
    text: str,
    start: str = MARK_START,
    end: str = MARK_END,
    heading: str = "## halo serve vs llama-server and llama-cpp-python",
) -> None:
    """Replace the section between ``start`` and ``end`` in BENCHMARKS.md (or add it under ``heading``)."""
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    path.write_text(doc)


def publish(
    text: str, raw: Any, results: Path | None, write: bool, start: str, end: str, heading: str
) -> None:
    """Save the raw rounds as JSON (unless ``results`` is None), print the section, write it when asked."""
    if results is not None:
        results.parent.mkdir(exist_ok=True)
        results.write_text(json.dumps(raw, indent=1))
    print(text)
    if write:
        write_section(text, start, end, heading)


def main() -> int:
    """Run the rounds, print the table, optionally write BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--only", action="append", help="run only these servers (repeatable)")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()
    lcp_needed = not args.only or "llama-cpp-python" in args.only
    if not (WORK / "llama-server").exists() or (lcp_needed and not (WORK / "lcp-venv/bin/python").exists()):
        print("run benchmarks/setup_peers.sh first", file=sys.stderr)
        return 2
    model = bundled_model_path()
    bias = eog_bias(model)
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        port = free_port()
        cmds = server_commands(model, port, args.threads)
        names = [n for n in cmds if not args.only or n in args.only]
        names = names[r % len(names) :] + names[: r % len(names)]
        row = {}
        for name in names:
            row[name] = run_one(name, cmds[name], port, bias, seed=r)
            lv = row[name]["levels"]
            print(
                f"round {r + 1} {name:17s} "
                + "  ".join(
                    f"c={c}: {lv[c]['output_tok_s']:6.1f} tok/s ttft {lv[c]['ttft_p50_ms']:5.0f} ms"
                    for c in LEVELS
                )
                + f"  rss {row[name]['peak_rss'] / 2**20:.0f} MiB",
                flush=True,
            )
        rounds.append(row)
    (WORK / "serve_bench.json").write_text(json.dumps(rounds, indent=1))
    if args.only:
        return 0
    text = render(median_table(rounds), args.rounds, args.threads, model, halo_kv_bytes(model))
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
