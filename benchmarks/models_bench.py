"""Many models on one box: cold-start time to first token, halo serve --models-dir against llama-server's
router mode (issue 17).

Three GGUFs in one directory (the bundled SmolLM2-135M-Instruct and two synthetic models written by
``haloserve.testing.synth_gguf``), served by ``halo serve --models-dir DIR --models-max 2`` (with a memory
budget that holds the two largest models and not three) and by ``llama-server --models-dir DIR
--models-max 2`` (router mode, from the llama.cpp that ``benchmarks/setup_peers.sh`` builds). Same
threads, slots and context per model. Each round starts each server fresh (nothing loaded; the order
rotates) and sends streamed ``/v1/completions`` requests: A (must be loaded), A again (loaded), B (must
be loaded), C (must evict A first: least recently used); which file is A, B and C rotates by round. Time to first token is measured from sending
the request to the first streamed token. The server's process tree is sampled for resident memory every
20 ms; its peak is compared with halo serve's budget. Medians of the rounds go between the ``models``
markers of ``BENCHMARKS.md``; raw rounds to ``benchmarks/results/models.json``.

``.venv/bin/python benchmarks/models_bench.py --rounds 3 --write``; ``--smoke``: seconds, for the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from serve_bench import ROOT, WORK, publish, spawned, wait_ready

from haloserve.bench.preflight import cpu_model
from haloserve.bundled import bundled_model_path
from haloserve.engine.llamacpp import cpu_has_amx
from haloserve.testing.remote import free_port

MARK_START, MARK_END = "<!-- models:start -->", "<!-- models:end -->"
HEADING = "## Many models: load on demand and eviction"
RESULTS = ROOT / "benchmarks" / "results" / "models.json"
HALO = [sys.executable, "-m", "haloserve"]
SERVERS = ["halo serve", "llama-server"]
# Two synthetic models of distinct shapes, each about the size of the bundled one (q8_0).
SYNTH = {
    "synth-a": {"n_layer": 4, "n_embd": 1024, "n_head": 8, "n_head_kv": 4, "n_ff": 2816, "seed": 1},
    "synth-b": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_head_kv": 4, "n_ff": 2048, "seed": 2},
}
SMOKE_SYNTH = {
    "synth-a": {"n_layer": 1, "n_embd": 64, "n_head": 4, "n_head_kv": 2, "n_ff": 128, "seed": 1},
    "synth-b": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_head_kv": 2, "n_ff": 128, "seed": 2},
}
THREADS, SLOTS, CTX = 2, 1, 2048


def model_dir(smoke: bool) -> tuple[Path, list[str]]:
    """The directory of GGUFs (written once under .work/) and the model ids in request order A, B, C."""
    from haloserve.testing.synth_gguf import write_gguf

    d = WORK / ("models-smoke" if smoke else "models")
    d.mkdir(parents=True, exist_ok=True)
    bundled = bundled_model_path()
    if not (d / bundled.name).exists():
        shutil.copyfile(bundled, d / bundled.name)
    shapes = SMOKE_SYNTH if smoke else SYNTH
    for name, shape in shapes.items():
        if not (d / f"{name}.gguf").exists():
            write_gguf(d / f"{name}.gguf", qtype="q8_0", name=name, **shape)
    return d, [bundled.stem, *shapes]


def server_cmd(name: str, d: Path, port: int, budget: int | None, threads: int = THREADS) -> list[str]:
    """halo serve or llama-server over the directory, two models at most, same per-model settings."""
    if name == "llama-server":
        no_repack = ["--no-repack"] if cpu_has_amx() else []  # llama.cpp #20824, as in serve_bench.py
        return [
            str(WORK / "llama-server"),
            "--models-dir",
            str(d),
            "--models-max",
            "2",
            "--port",
            str(port),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-np",
            str(SLOTS),
            "-c",
            str(CTX),
            "--log-disable",
            *no_repack,
        ]
    return [
        *HALO,
        "serve",
        "--models-dir",
        str(d),
        "--models-max",
        "2",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--parallel",
        str(SLOTS),
        "--ctx-size",
        str(CTX),
        "--log-level",
        "warning",
        *(["--memory-budget", f"{budget}B"] if budget else []),
    ]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        todo += children.get(p, [])
    return total


@contextlib.contextmanager
def rss_sampler(pid: int, every: float = 0.02) -> Iterator[list[int]]:
    """Samples the tree's RSS in a thread while the block runs; the list gets the peak at exit."""
    peak = [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(pid))
            stop.wait(every)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


def ttft(url: str, model: str, timeout: float = 600) -> float:
    """Seconds from sending a streamed completion to its first token."""
    body = {
        "model": model,
        "prompt": "The capital of France is",
        "max_tokens": 4,
        "stream": True,
        "temperature": 0,
    }
    t0 = time.monotonic()
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=timeout) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {r.status_code}: {r.read().decode()[:300]}")
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:]).get("choices"):
                took = time.monotonic() - t0
                break
        else:
            raise RuntimeError(f"{model}: the stream ended without a token")
        for _ in lines:  # let the request finish before the next one
            pass
    return took


def halo_estimates(d: Path, ids: list[str]) -> dict[str, int]:
    """The memory halo serve plans for each model (``/v1/models`` -> halo.memory_bytes, nothing loaded)."""
    port = free_port()
    with spawned("models-halo-probe", server_cmd("halo serve", d, port, None)) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        listed = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    mem = {m["id"]: int(m["halo"]["memory_bytes"]) for m in listed}
    return {i: mem[i] for i in ids}


def one_server(name: str, d: Path, ids: list[str], budget: int | None, threads: int) -> dict[str, Any]:
    """Start the server fresh, run A, A, B, C; TTFTs, peak and idle RSS of its process tree."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    a, b, c = ids
    t0 = time.monotonic()
    out: dict[str, Any] = {"order": ids}
    with spawned(f"models-{name.replace(' ', '_')}", server_cmd(name, d, port, budget, threads)) as proc:
        wait_ready(url, proc)
        out |= {"start_s": time.monotonic() - t0, "idle_rss": tree_rss(proc.pid)}
        with rss_sampler(proc.pid) as peak:
            out["cold"] = ttft(url, a)
            out["warm"] = ttft(url, a)
            out["cold_b"] = ttft(url, b)
            out["evict"] = ttft(url, c)
            listed = httpx.get(url + "/v1/models", timeout=30).json()["data"]
        out["peak_rss"] = peak[0]
        out["loaded"] = sorted(m["id"] for m in listed if (m.get("status") or {}).get("value") == "loaded")
    return out


def render(
    rounds: list[dict[str, Any]],
    ids: list[str],
    d: Path,
    budget: int,
    est: dict[str, int],
    load: tuple[float, float],
) -> str:
    """The BENCHMARKS.md section: ratios first, then medians, machine and load named."""
    mib = 2**20
    names = [n for n in SERVERS if n in rounds[0]]

    def med(n: str, k: str) -> float:
        return statistics.median(float(r[n][k]) for r in rounds)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = ["| target | figure | verdict |", "|---|---|---|"]
    if "llama-server" in names:
        for k, what in (
            ("cold", "a model that must be loaded"),
            ("evict", "one that must evict another first"),
        ):
            ratio = med("halo serve", k) / med("llama-server", k)
            lines.append(
                f"| time to first token, {what}, vs llama-server (<= 1.0x) | {ratio:.2f}x | {verdict(ratio <= 1.0)} |"
            )
    worst = max(r["halo serve"]["peak_rss"] - r["halo serve"]["idle_rss"] for r in rounds)
    lines.append(
        f"| halo serve: peak resident memory above the idle server, worst round, <= budget "
        f"({budget / mib:.0f} MiB) | {worst / mib:.0f} MiB | {verdict(worst <= budget)} |"
    )
    lines += [
        "",
        "| server | start s | TTFT cold (A) s | TTFT loaded (A) s | TTFT cold (B) s | TTFT evicting A (C) s "
        "| idle RSS MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        lines.append(
            f"| {n} | {med(n, 'start_s'):.2f} | {med(n, 'cold'):.2f} | {med(n, 'warm'):.3f} | "
            f"{med(n, 'cold_b'):.2f} | {med(n, 'evict'):.2f} | {med(n, 'idle_rss') / mib:.0f} | "
            f"{med(n, 'peak_rss') / mib:.0f} |"
        )
    files = ", ".join(
        f"{i} ({(d / f'{i}.gguf').stat().st_size / mib:.0f} MiB file, planned {est[i] / mib:.0f} MiB)"
        for i in ids
    )
    lines += [
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; CPU only. Load average {load[0]:.2f} before, {load[1]:.2f} after (shared "
        f"machine). Models: {files}; which is A, B and C rotates by round (the same for both servers). Both servers: --models-max 2, {THREADS} threads, {SLOTS} slot, "
        f"context {CTX} per model; halo serve also --memory-budget {budget / mib:.0f} MiB (the two largest "
        "planned models; three do not fit). Requests: streamed /v1/completions, 4 tokens, temperature 0; TTFT "
        "from sending to the first streamed token, page cache warm (files read before). RSS: the server's "
        f"process tree (llama-server's router runs one child process per model), sampled every 20 ms. "
        f"Medians of {len(rounds)} rounds, server order rotated. Per round (A, B, C): "
        + "; ".join(", ".join(r[names[0]]["order"]) for r in rounds)
        + ".",
        f"Reproduce: `benchmarks/setup_peers.sh && .venv/bin/python benchmarks/models_bench.py --rounds "
        f"{len(rounds)} --write`.",
    ]
    return "\n".join(lines)


def main() -> int:
    """Run the rounds, print the section, optionally write it into BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="one round on tiny models (seconds), for the tests")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()
    peer_ok = (WORK / "llama-server").exists()
    if not peer_ok and not args.smoke:
        print("run benchmarks/setup_peers.sh first (llama-server)", file=sys.stderr)
        return 2
    rounds_n = 1 if args.smoke else args.rounds
    d, ids = model_dir(args.smoke)
    est = halo_estimates(d, ids)
    budget = sum(sorted(est.values())[-2:]) if len(ids) > 2 else sum(est.values())
    names = [n for n in SERVERS if n != "llama-server" or peer_ok]
    before = os.getloadavg()[0]
    rounds = []
    for r in range(rounds_n):
        order = names[r % len(names) :] + names[: r % len(names)]
        # which file is A, B and C rotates too: a first load may cost more than a later one, and one file
        # may load slower than another; both servers get the same order in a round
        abc = ids[r % len(ids) :] + ids[: r % len(ids)]
        row = {}
        for n in order:
            row[n] = one_server(
                n, d, abc, budget if n == "halo serve" else None, 1 if args.smoke else THREADS
            )
            s = row[n]
            print(
                f"round {r + 1} {n} (A, B, C = {', '.join(abc)}): cold {s['cold']:.2f} s, loaded {s['warm']:.3f} s, cold B {s['cold_b']:.2f} s, "
                f"evicting {s['evict']:.2f} s, peak RSS {s['peak_rss'] / 2**20:.0f} MiB, loaded at the end: "
                f"{s['loaded']}",
                flush=True,
            )
        rounds.append(row)
    load = (before, os.getloadavg()[0])
    raw = {"rounds": rounds, "estimates": est, "budget": budget, "load": load}
    text = render(rounds, ids, d, budget, est, load)
    smoke = args.smoke  # a smoke run saves and writes nothing
    publish(text, raw, None if smoke else RESULTS, args.write and not smoke, MARK_START, MARK_END, HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
