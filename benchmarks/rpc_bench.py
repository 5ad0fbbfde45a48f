"""One model over two RPC workers: halo serve --rpc against llama-server --rpc on one machine (issue 15).

Three set-ups on the same GGUF (the bundled SmolLM2-135M-Instruct Q4_1) with the same compute threads:
(a) one ``halo serve`` with 2 threads; (b) ``halo serve --rpc`` over two ``halo rpc-worker`` processes
with 1 thread each; (c) ``llama-server --rpc`` over two ``ggml-rpc-server`` processes with 1 thread each
(the peer, built by ``benchmarks/setup_peers.sh`` from the llama.cpp vendored in the llama-cpp-python
sdist). In (b) and (c) every layer lives on the workers; the serving process keeps 1 thread for what
stays local (token embeddings, sampling). Each round measures, for each set-up in a rotating order:
model load time (process start to ``/health`` 200, workers already up), decode tokens/s at c=1 and c=8
(``halo bench``, 128 tokens a request by default, end-of-generation banned, as ``serve_bench.py``), and
for (b) and (c) a reload (a new server process) against the same workers without and with the workers'
tensor cache (``--cache``), and for (b) the self-healing reload after a worker crash. ggml caches only
tensors over 10 MiB, so (b) also loads a synthetic model with large tensors (load times only). Then (b)
again with latency between the serving process and its workers (network namespace, veth, ``tc netem``)
where this machine allows it; otherwise the section says why not.

``.venv/bin/python benchmarks/rpc_bench.py --rounds 3 --write`` (after ``benchmarks/setup_peers.sh``);
``--smoke`` runs a few seconds of everything it can, for the test suite. Raw rounds go to
``benchmarks/results/rpc.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from netlink import latency_link, netem_problem
from serve_bench import ROOT, WORK, drive, eog_bias, publish, spawned, wait_ready

from haloserve.bench.preflight import cpu_model
from haloserve.bundled import bundled_model_path
from haloserve.engine.llamacpp import cpu_has_amx
from haloserve.testing.remote import free_port

MARK_START, MARK_END = "<!-- rpc:start -->", "<!-- rpc:end -->"
HEADING = "## halo serve --rpc: one model over several workers"
RESULTS = ROOT / "benchmarks" / "results" / "rpc.json"
HALO = [sys.executable, "-m", "haloserve"]
SETUPS = {"a": "halo serve", "b": "halo serve --rpc", "c": "llama-server --rpc"}
# A synthetic model whose FFN matrices (2048 x 5632 f16, 22 MiB) are over ggml's 10 MiB cache threshold.
SYNTH_SHAPE = {"n_layer": 8, "n_embd": 2048, "n_head": 16, "n_head_kv": 4, "n_ff": 5632}
DELAYS_MS = [0.01, 0.1]


class Plan:
    """What one run does: levels, request sizes, rounds (full run or smoke)."""

    def __init__(self, args: argparse.Namespace) -> None:
        smoke = args.smoke
        self.rounds = 1 if smoke else args.rounds
        self.threads = 1 if smoke else args.threads  # a spinning 2-thread pool on a busy 2-core box crawls
        self.levels = [1, 2] if smoke else [1, 8]
        self.slots = max(self.levels)
        self.ctx = self.slots * 512
        self.input_len, self.output_len = (16, 8) if smoke else (args.input_len, args.output_len)
        self.requests = 1 if smoke else args.requests  # per level: this many x concurrency (after warm-up)
        # the smoke loads with the cache on only (the same code paths, half the loads)
        self.caches = ["cache"] if smoke else ["nocache", "cache"]

    def drive(self, url: str, name: str, bias: dict[str, int], seed: int) -> dict[int, dict[str, Any]]:
        """The decode levels against one server."""
        out: dict[int, dict[str, Any]] = {}
        for c in self.levels:
            out |= drive(
                url,
                name,
                bias,
                seed,
                [c],
                input_len=self.input_len,
                output_len=self.output_len,
                num_prompts=max(2, self.requests * c),
            )
        return out


def worker_cmd(
    peer: bool, host: str, port: int, threads: int, cache: Path | None
) -> tuple[list[str], dict[str, str]]:
    """A worker's command line and environment (ggml-rpc-server keeps its cache under $LLAMA_CACHE/rpc)."""
    env = dict(os.environ)
    if peer:
        if cache:
            env["LLAMA_CACHE"] = str(cache)
        cmd = [str(WORK / "ggml-rpc-server"), "-H", host, "-p", str(port), "-t", str(threads)]
        return cmd + (["-c"] if cache else []), env
    cmd = [*HALO, "rpc-worker", "--host", host, "--port", str(port), "--threads", str(threads)]
    return cmd + (["--cache", str(cache)] if cache else []), env


def server_cmd(peer: bool, model: Path, port: int, plan: Plan, threads: int, rpc: list[str]) -> list[str]:
    """halo serve or llama-server, same slots and context; with ``rpc``, every layer on the workers."""
    s, c, t = str(plan.slots), str(plan.ctx), str(threads)
    if peer:
        # On AMX CPUs llama.cpp's repacked kernels segfault (llama.cpp #20824); halo serve turns repacking
        # off there by itself, llama-server must be told (as in serve_bench.py).
        extra = (["--rpc", ",".join(rpc), "-ngl", "999"] if rpc else []) + (
            ["--no-repack"] if cpu_has_amx() else []
        )
        return [
            str(WORK / "llama-server"),
            "-m",
            str(model),
            "--port",
            str(port),
            "-np",
            s,
            "-c",
            c,
            "-t",
            t,
            "-tb",
            t,
            "--log-disable",
            *extra,
        ]
    extra = ["--rpc", ",".join(rpc)] if rpc else []
    return [
        *HALO,
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--parallel",
        s,
        "--ctx-size",
        c,
        "--threads",
        t,
        "--log-level",
        "warning",
        *extra,
    ]


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until the worker accepts TCP connections (a bare connect and close is harmless to ggml's server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"worker {host}:{port} not listening")


class Workers:
    """Two workers of one thread each (cache in ``cache``/w0, w1 when given), stopped on exit; one can be
    killed and started again on its port with its cache (the self-healing reload)."""

    def __init__(self, peer: bool, cache: Path | None, *, host: str = "127.0.0.1", netns: str | None = None):
        self.peer, self.cache, self.host, self.netns = peer, cache, host, netns
        self.ports = [free_port(), free_port()]
        self.endpoints = [f"{host}:{p}" for p in self.ports]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Workers:
        self.procs = [self._spawn(i) for i in range(2)]  # both start at once, then both are waited for
        for i, proc in enumerate(self.procs):
            wait_port(self.host, self.ports[i], proc)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        cmd, env = worker_cmd(
            self.peer, self.host, self.ports[i], 1, self.cache / f"w{i}" if self.cache else None
        )
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        name = f"rpc-{'peer' if self.peer else 'halo'}-worker{i}"
        return self._stack.enter_context(spawned(name, cmd, env))

    def kill(self, i: int) -> None:
        """SIGKILL worker ``i``, as a crash."""
        self.procs[i].kill()
        self.procs[i].wait()

    def restart(self, i: int) -> None:
        """Start worker ``i`` again (same port, same cache) and wait until it listens."""
        self.procs[i] = self._spawn(i)
        wait_port(self.host, self.ports[i], self.procs[i])


def self_heal(url: str, ws: Workers, timeout: float = 600) -> float:
    """Kill worker 1, wait for /health to drop, start the worker again: seconds from it listening to /health
    200 (halo serve notices within its 1 s probe interval and reloads the model by itself)."""
    ws.kill(1)
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/health", timeout=30).status_code == 200:
        if time.monotonic() > deadline:
            raise TimeoutError("halo serve did not notice the lost worker")
        time.sleep(0.1)
    ws.restart(1)
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=30).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError("halo serve did not reload after the worker came back")


def timed_load(
    name: str, cmd: list[str], port: int, then: Callable[[str], Any] | None = None
) -> tuple[float, Any]:
    """Start a server, time it to ready, run ``then(url)`` on it, stop it."""
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with spawned(name, cmd) as proc:
        wait_ready(url, proc, timeout=900)
        took = time.monotonic() - t0
        return took, then(url) if then else None


def rpc_loads(
    peer: bool, model: Path, plan: Plan, cache: bool, then: Callable[[str], Any] | None = None
) -> dict[str, Any]:
    """Against fresh workers (with an empty cache or none): first load (running ``then``), then a reload
    (a new server process) and, for halo serve, a self-healing reload after a worker crash."""
    name = SETUPS["c" if peer else "b"]
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=WORK))) if cache else None
        ws = stack.enter_context(Workers(peer, root))
        port = free_port()
        cmd = server_cmd(peer, model, port, plan, 1, ws.endpoints)
        first, result = timed_load(name, cmd, port, then)
        reload, heal = timed_load(name, cmd, port, None if peer else lambda url: self_heal(url, ws))
    return {"first_s": first, "reload_s": reload, "levels": result, **({} if peer else {"heal_s": heal})}


def one_round(
    r: int, model: Path, synth: Path | None, bias: dict[str, int], plan: Plan, peer_ok: bool
) -> dict[str, Any]:
    """Every set-up once (order rotated by round)."""
    order = [k for k in "abc" if k != "c" or peer_ok]
    order = order[r % len(order) :] + order[: r % len(order)]
    row: dict[str, Any] = {}
    for key in order:
        name = SETUPS[key]

        def levels(url: str, name: str = name) -> dict[int, dict[str, Any]]:
            return plan.drive(url, name, bias, seed=r)

        if key == "a":
            port = free_port()
            load, lv = timed_load(name, server_cmd(False, model, port, plan, plan.threads, []), port, levels)
            row[key] = {"load_s": load, "levels": lv}
        else:
            peer = key == "c"
            first, *rest = plan.caches  # the decode levels run on the first fresh load
            bundled = {first: rpc_loads(peer, model, plan, cache=first == "cache", then=levels)}
            lv = bundled[first].pop("levels")
            bundled |= {c: rpc_loads(peer, model, plan, cache=c == "cache") for c in rest}
            loads = {"bundled": bundled}
            if synth is not None and not peer:  # the cache target is (b)'s; (c) would double the run
                loads["synthetic"] = {
                    c: rpc_loads(peer, synth, plan, cache=c == "cache") for c in plan.caches
                }
            for by in loads.values():
                for d in by.values():
                    d.pop("levels", None)
            row[key] = {"load_s": bundled[first]["first_s"], "levels": lv, "loads": loads}
        print(f"round {r + 1} {name}: {summary(row[key])}", flush=True)
    return row


def summary(s: dict[str, Any]) -> str:
    """One progress line."""
    lv = s["levels"]
    text = f"load {s['load_s']:.2f} s  " + "  ".join(
        f"c={c}: {v['output_tok_s']:.1f} tok/s, {1000 / v['tpot_p50_ms']:.1f} tok/s a stream"
        for c, v in lv.items()
    )
    for m, by in s.get("loads", {}).items():
        text += f"  {m}: " + ", ".join(
            f"{c} {json.dumps({k: round(v, 2) for k, v in d.items()})}" for c, d in by.items()
        )
    return text


def latency_runs(model: Path, bias: dict[str, int], plan: Plan) -> dict[str, Any]:
    """(b) with its workers behind a veth link with netem delay (one round each), or why it cannot run."""
    problem = netem_problem()
    if problem:
        return {"problem": problem}
    out: dict[str, Any] = {}
    for delay in [0.0, *DELAYS_MS]:
        with latency_link(delay) as (netns, ip), Workers(False, None, host=ip, netns=netns) as ws:
            port = free_port()
            load, lv = timed_load(
                SETUPS["b"],
                server_cmd(False, model, port, plan, 1, ws.endpoints),
                port,
                lambda url: plan.drive(url, SETUPS["b"], bias, seed=0),
            )
            out[str(delay)] = {"load_s": load, "levels": lv}
        print(f"netem {delay} ms: {summary(out[str(delay)])}", flush=True)
    return out


def med(rounds: list[dict[str, Any]], key: str, *path: Any) -> float:
    """Median over rounds of row[key][path...]."""
    vals = []
    for row in rounds:
        v: Any = row[key]
        for p in path:
            v = v[p]
        vals.append(float(v))
    return statistics.median(vals)


def render(
    rounds: list[dict[str, Any]],
    lat: dict[str, Any],
    plan: Plan,
    model: Path,
    synth: Path | None,
    load: tuple[float, float],
) -> str:
    """The BENCHMARKS.md section: ratios first, then medians, machine and load named."""
    lo, hi = plan.levels[0], plan.levels[-1]
    keys = [k for k in "abc" if k in rounds[0]]

    def dec(k: str, c: int) -> float:  # decode tokens/s of one stream
        return 1000 / med(rounds, k, "levels", c, "tpot_p50_ms")

    def thr(k: str, c: int) -> float:
        return med(rounds, k, "levels", c, "output_tok_s")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = ["| target | ratio | verdict |", "|---|---|---|"]
    if "c" in keys:
        r1, r8 = dec("b", lo) / dec("c", lo), thr("b", hi) / thr("c", hi)
        lines += [
            f"| (b) / (c) decode tokens/s, c={lo} (>= 0.95x) | {r1:.2f}x | {verdict(r1 >= 0.95)} |",
            f"| (b) / (c) output tokens/s, c={hi} (>= 1.0x) | {r8:.2f}x | {verdict(r8 >= 1.0)} |",
        ]
    files = {"bundled": model, "synthetic": synth}
    for m in rounds[0]["b"]["loads"] if len(plan.caches) == 2 else []:
        for what, field in (
            ("a new server process", "reload_s"),
            ("self-healing, after a worker crash", "heal_s"),
        ):
            ratio = med(rounds, "b", "loads", m, "nocache", field) / med(
                rounds, "b", "loads", m, "cache", field
            )
            lines.append(
                f"| (b) reload ({what}) without / with the tensor cache, {files[m].name} (>= 2x) "
                f"| {ratio:.2f}x | {verdict(ratio >= 2)} |"
            )
    lines += [
        "",
        f"| set-up | load s | c={lo} decode tok/s | c={lo} TTFT p50 ms | c={hi} output tok/s | "
        f"c={hi} TPOT p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for k in keys:
        lines.append(
            f"| ({k}) {SETUPS[k]} | {med(rounds, k, 'load_s'):.2f} | {dec(k, lo):.1f} | "
            f"{med(rounds, k, 'levels', lo, 'ttft_p50_ms'):.0f} | {thr(k, hi):.1f} | "
            f"{med(rounds, k, 'levels', hi, 'tpot_p50_ms'):.1f} |"
        )
    lines += [
        "",
        "Loads against two fresh workers, seconds: first load and reload (a new server process) from process "
        "start to `/health` 200; self-healing reload (halo serve only: worker 1 killed, started again on its "
        "port with its cache) from the worker listening again to `/health` 200.",
        "",
        "| set-up | model | cache | first load | reload | self-healing reload |",
        "|---|---|---|---|---|---|",
    ]
    for k in [k for k in keys if k != "a"]:
        for m, by in rounds[0][k]["loads"].items():
            for c in by:
                heal = f"{med(rounds, k, 'loads', m, c, 'heal_s'):.2f}" if k == "b" else "-"
                lines.append(
                    f"| ({k}) {SETUPS[k]} | {files[m].name} | {'on' if c == 'cache' else 'off'} | "
                    f"{med(rounds, k, 'loads', m, c, 'first_s'):.2f} | {med(rounds, k, 'loads', m, c, 'reload_s'):.2f} "
                    f"| {heal} |"
                )
    lines += ["", latency_text(lat, lo, hi)]
    mib = 2**20
    lines += [
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; CPU only, everything on one machine over loopback. Load average "
        f"{load[0]:.2f} before, {load[1]:.2f} after (the machine is shared; other sessions' work competes for "
        f"the cores). Model: {model.name} ({model.stat().st_size / mib:.0f} MiB)"
        + (
            f"; synthetic {synth.name} ({synth.stat().st_size / mib:.0f} MiB, f16, {SYNTH_SHAPE}) for loads"
            if synth
            else ""
        )
        + ". "
        f"Threads: (a) {plan.threads}; (b), (c) 1 per worker and 1 in the serving process. {plan.slots} slots x "
        f"512 tokens; prompts ~{plan.input_len} tokens, {plan.output_len} output tokens a request (EOG banned "
        f"with logit_bias, counts checked), temperature 0.8, /v1/completions streamed, load from `halo bench`. "
        f"{plan.requests} x c requests a level after 2 warm-up ones. Decode tok/s at c={lo} = 1000 / TPOT p50. Medians of {len(rounds)} rounds, set-up order rotated.",
        f"Reproduce: `benchmarks/setup_peers.sh && .venv/bin/python benchmarks/rpc_bench.py --rounds "
        f"{len(rounds)} --input-len {plan.input_len} --output-len {plan.output_len} --requests {plan.requests} "
        f"--write`.",
    ]
    return "\n".join(lines)


def latency_text(lat: dict[str, Any], lo: int, hi: int) -> str:
    """The latency part: a table, or the reason it was not measured."""
    published = (
        "Published community runs on two Strix Halo boxes over 50 GbE (quoted in issue 15): GLM-4.6 "
        "355B at about 9 tokens/s, MiniMax-M2 at about 19."
    )
    if "problem" in lat:
        return f"Latency between the processes (tc netem, 0.01 and 0.1 ms): **not measured**: {lat['problem']}. {published}"
    rows = [
        f"(b) with delay added on both ends of a veth link to the workers' network namespace (one round): "
        f"{published}",
        "",
        f"| netem delay each way | c={lo} decode tok/s | c={hi} output tok/s | vs no delay |",
        "|---|---|---|---|",
    ]
    base = 1000 / lat["0.0"]["levels"][lo]["tpot_p50_ms"]
    for d, s in lat.items():
        one = 1000 / s["levels"][lo]["tpot_p50_ms"]
        rows.append(f"| {d} ms | {one:.1f} | {s['levels'][hi]['output_tok_s']:.1f} | {one / base:.2f}x |")
    return "\n".join(rows)


def synthetic_model() -> Path | None:
    """The large-tensor synthetic GGUF (written once under .work/), or None without the synth module."""
    try:
        from haloserve.testing.synth_gguf import write_gguf
    except ImportError:
        return None
    path = WORK / "synth-rpc.gguf"
    if not path.exists():
        write_gguf(path, qtype="f16", name=path.stem, **SYNTH_SHAPE)
    return path


def main() -> int:
    """Run the rounds, print the section, optionally write it into BENCHMARKS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads of (a); (b) and (c) use 1 per process")
    ap.add_argument(
        "--input-len", type=int, default=200, help="prompt words a request (about one token each)"
    )
    ap.add_argument("--output-len", type=int, default=128, help="tokens generated a request")
    ap.add_argument("--requests", type=int, default=4, help="requests per level: this many x concurrency")
    ap.add_argument("--smoke", action="store_true", help="one tiny round (seconds), for the test suite")
    ap.add_argument("--no-synth", action="store_true", help="skip the synthetic large-tensor model")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()
    plan = Plan(args)
    peer_ok = (WORK / "llama-server").exists() and (WORK / "ggml-rpc-server").exists()
    if not peer_ok and not args.smoke:
        print("run benchmarks/setup_peers.sh first (llama-server and ggml-rpc-server)", file=sys.stderr)
        return 2
    WORK.mkdir(exist_ok=True)
    model = bundled_model_path()
    # the smoke leaves the synthetic model out: the same loads as the bundled one, twice the time
    synth = None if args.no_synth or args.smoke else synthetic_model()
    bias = eog_bias(model)
    before = os.getloadavg()[0]
    rounds = [one_round(r, model, synth, bias, plan, peer_ok) for r in range(plan.rounds)]
    lat = {"problem": "skipped in --smoke"} if args.smoke else latency_runs(model, bias, plan)
    load = (before, os.getloadavg()[0])
    raw = {"rounds": rounds, "latency": lat, "load": load}
    text = render(rounds, lat, plan, model, synth, load)
    smoke = args.smoke  # a smoke run saves and writes nothing
    publish(text, raw, None if smoke else RESULTS, args.write and not smoke, MARK_START, MARK_END, HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
