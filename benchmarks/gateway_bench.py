"""halo gateway against nginx and LiteLLM's proxy, its added latency, and prefix vs round-robin routing.

Three parts, each repeated ``--rounds`` times (medians reported):

1. **Throughput**: non-streaming chat requests with small bodies through each proxy to one fast fake
   upstream (``haloserve.testing.upstream`` in its own process), ``wrk`` with 32 connections.
   halo gateway runs with keys required (a real key from its SQLite store), usage accounting and
   access logs on, with 1 and with 2 worker processes. nginx is Debian's, as a plain keep-alive
   reverse proxy (``worker_processes auto``, no access log). LiteLLM's proxy runs with one worker
   and a master key (its per-key accounting needs Postgres, which is not set up: it is measured
   doing less than the gateway).
2. **Added latency**: 16 concurrent streams (fake upstream: TTFT 20 ms, 64 tokens 2 ms apart) driven
   by ``halo bench`` (640 requests each way), direct to the upstream and through the gateway: the
   difference of the end-to-end latency p50/p99 and of TTFT p50.
3. **Prefix routing**: two real ``halo serve`` nodes (bundled model, 4 slots each); ``halo bench``'s
   shared-prefix workload with more distinct system prompts (6) than one node has slots, through the
   gateway with ``prefix`` and with ``round-robin``: TTFT p50 and request throughput ratios.

Run ``benchmarks/setup_gateway_peers.sh`` first, then
``.venv/bin/python benchmarks/gateway_bench.py --rounds 3 --write``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from haloserve.bench.preflight import cpu_model
from haloserve.bench.runner import Runner
from haloserve.config.bench import BenchSettings
from haloserve.gateway.store import Store
from haloserve.testing.remote import RemoteServer, free_port
from haloserve.testing.upstream_cli import spawn
from haloserve.testing.upstream_config import UpstreamConfig

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
ROOT = HERE.parent
MARK_START, MARK_END = "<!-- gateway:start -->", "<!-- gateway:end -->"
RESULTS = ROOT / "benchmarks" / "results" / "gateway.json"
# More distinct system prompts than one node has slots, fewer than both nodes have together: the case
# where a router decides whether the cluster's caches hold every prompt or keep evicting them.
PREFIXES, PREFIX_WORDS, SLOTS, PREFIX_REQUESTS = 6, 600, 4, 48
BODY = '{"model":"fake-model","messages":[{"role":"user","content":"hello there"}],"max_tokens":4}'
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
LITELLM = WORK / "litellm-venv" / "bin" / "litellm"


def wait_http(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@contextlib.contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped with SIGTERM (then SIGKILL) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wrk(url: str, seconds: int, key: str | None = None) -> dict[str, float]:
    """Requests/s and latency percentiles of a ``wrk`` run (32 connections, 2 threads)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = \'{BODY}\'\nwrk.headers["Content-Type"] = "application/json"\n{auth}'
    )
    cmd = [
        "wrk",
        "-t2",
        "-c32",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url + "/v1/chat/completions",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    lat = {
        p: _ms(m.group(1))
        for p, m in ((p, re.search(rf"\s{p}%\s+([0-9.]+\w+)", out)) for p in ("50", "99"))
        if m
    }
    return {
        "rps": rps,
        "p50_ms": lat.get("50", 0.0),
        "p99_ms": lat.get("99", 0.0),
        "non2xx": float(bad.group(1)) if bad else 0,
    }


def _ms(text: str) -> float:
    m = re.match(r"([0-9.]+)(us|ms|s)", text)
    assert m is not None
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


@contextlib.contextmanager
def halo_gateway(backends: list[str], tmp: Path, *extra: str) -> Iterator[tuple[str, str]]:
    """``halo gateway`` with keys required and usage on; yields (url, key)."""
    db = tmp / f"gw-{free_port()}.db"
    key = Store(db).create_key("bench").secret
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "haloserve",
        "gateway",
        "--port",
        str(port),
        "--keys-db",
        str(db),
        "--require-keys",
    ]
    for b in backends:
        cmd += ["--backend", b]
    with process([*cmd, *extra], tmp / f"gateway-{port}.log"):
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready")
        yield url, key


@contextlib.contextmanager
def nginx(upstream: str, tmp: Path) -> Iterator[str | None]:
    """Debian's nginx as a keep-alive reverse proxy (None when nginx is not installed)."""
    if NGINX is None:
        yield None
        return
    port = free_port()
    conf = tmp / "nginx.conf"
    host = upstream.removeprefix("http://")
    conf.write_text(
        f"worker_processes auto; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log; daemon off;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; upstream up {{ server {host}; keepalive 64; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1;"
        ' proxy_set_header Connection ""; proxy_buffering off; } } }\n'
    )
    with process([NGINX, "-c", str(conf), "-p", str(tmp)], tmp / "nginx.log"):
        time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def litellm(upstream: str, tmp: Path) -> Iterator[str | None]:
    """LiteLLM's proxy, one worker, a master key (None when it is not installed)."""
    if not LITELLM.exists():
        yield None
        return
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n  - model_name: fake-model\n    litellm_params:\n      model: openai/fake-model\n"
        f"      api_base: {upstream}/v1\n      api_key: none\n"
        "general_settings:\n  master_key: sk-bench\nlitellm_settings:\n  drop_params: true\n"
    )
    cmd = [str(LITELLM), "--config", str(cfg), "--port", str(port), "--num_workers", "1"]
    env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    with process(cmd, tmp / "litellm.log", env=env):
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health/liveliness", timeout=180)
        yield url


def throughput_round(tmp: Path, seconds: int) -> dict[str, dict[str, float]]:
    """One round of part 1."""
    out: dict[str, dict[str, float]] = {}
    with spawn(UpstreamConfig()) as up:
        wrk(up, 2)  # warm
        out["direct"] = wrk(up, seconds)
        for workers in (1, 2):
            with halo_gateway([up], tmp, "--workers", str(workers)) as (url, key):
                wrk(url, 2, key)
                out[f"halo gateway ({workers} worker{'s' if workers > 1 else ''})"] = wrk(url, seconds, key)
        with nginx(up, tmp) as url_n:
            if url_n:
                wrk(url_n, 2)
                out["nginx"] = wrk(url_n, seconds)
        with litellm(up, tmp) as url_l:
            if url_l:
                wrk(url_l, 3, "sk-bench")
                out["LiteLLM"] = wrk(url_l, seconds, "sk-bench")
    return out


def bench(url: str, key: str | None, **kw: Any) -> Any:
    """One ``halo bench`` level; returns its metrics."""
    values: dict[str, Any] = {
        "url": url,
        "api_key": key,
        "progress": False,
        "plots": False,
        "keepalive": True,
    }
    settings = BenchSettings(**{**values, **kw}).checked()
    return asyncio.run(Runner(settings).run()).levels[0].metrics


def latency_round(tmp: Path) -> dict[str, float]:
    """One round of part 2: differences gateway minus direct, in ms."""
    cfg = UpstreamConfig(ttft_ms=20, itl_ms=2, default_max_tokens=64)
    kw = {"concurrency": [16], "num_prompts": 640, "input_len": 32, "output_len": 64, "warmup": 16}
    with spawn(cfg) as up, halo_gateway([up], tmp) as (url, key):
        direct = bench(up, None, **kw)
        via = bench(url, key, **kw)
    return {
        "e2e_p50_direct": direct.e2el_ms.median,
        "e2e_p50_gateway": via.e2el_ms.median,
        "added_p50": via.e2el_ms.median - direct.e2el_ms.median,
        "added_p99": via.e2el_ms.p99 - direct.e2el_ms.p99,
        "ttft_p50_direct": direct.ttft_ms.median,
        "ttft_p50_gateway": via.ttft_ms.median,
        "added_ttft_p50": via.ttft_ms.median - direct.ttft_ms.median,
        "failed": float(direct.failed + via.failed),
    }


def _node_counter(node: RemoteServer, name: str) -> float:
    text = httpx.get(node.url + "/metrics", timeout=10).text
    m = re.search(rf"^{name}_total\s+([0-9.e+]+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def prefix_round(tmp: Path, nodes: list[RemoteServer], index: int) -> dict[str, float]:
    """One round of part 3 on already running nodes (fresh prompts per run, so no run warms the next)."""
    out: dict[str, float] = {}
    kw = {
        "workload": "shared-prefix",
        "num_prefixes": PREFIXES,
        "prefix_len": PREFIX_WORDS,
        "input_len": 16,
        "output_len": 8,
        "concurrency": [2],
        "num_prompts": PREFIX_REQUESTS,
        "warmup": 0,
        "model": "smol",
    }
    for k, policy in enumerate(("round-robin", "prefix")):
        hit0 = sum(_node_counter(n, "halo_prefix_cache_hit_tokens") for n in nodes)
        done0 = sum(_node_counter(n, "halo_prompt_tokens_processed") for n in nodes)
        with halo_gateway([n.url for n in nodes], tmp, "--policy", policy) as (url, key):
            m = bench(url, key, seed=1000 * index + k, **kw)
        hits = sum(_node_counter(n, "halo_prefix_cache_hit_tokens") for n in nodes) - hit0
        done = sum(_node_counter(n, "halo_prompt_tokens_processed") for n in nodes) - done0
        out[f"{policy}_ttft_p50"] = m.ttft_ms.median
        out[f"{policy}_rps"] = m.request_throughput
        out[f"{policy}_failed"] = m.failed
        out[f"{policy}_cache_hit"] = hits / max(1.0, hits + done)
    return out


def median_of(rounds: list[dict[str, Any]], key: str, field: str | None = None) -> float:
    """Median over rounds of one number."""
    vals = [r[key][field] if field else r[key] for r in rounds if key in r]
    return statistics.median(vals) if vals else float("nan")


def per_round(rounds: list[dict[str, float]], key: str) -> str:
    """``+0.75, +1.12, +0.66``: one figure of every round, signed, in run order."""
    return ", ".join(f"{r[key]:+.2f}" for r in rounds)


def _ttft_pair(r: dict[str, float]) -> str:
    return f"{r['round-robin_ttft_p50']:.0f} / {r['prefix_ttft_p50']:.0f}"


def _rps_ratio(r: dict[str, float]) -> str:
    return f"{r['prefix_rps'] / r['round-robin_rps']:.2f}x"


def render(
    tp: list[dict[str, dict[str, float]]], lat: list[dict[str, float]], pre: list[dict[str, float]]
) -> str:
    """The BENCHMARKS.md section."""
    cpu = cpu_model()
    load = os.getloadavg()
    gw = max((k for k in tp[0] if k.startswith("halo gateway")), key=lambda k: median_of(tp, k, "rps"))
    g = median_of(tp, gw, "rps")
    lines = [
        "## halo gateway",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the end (shared, noisy).",
        f"Medians of {len(tp)} runs; `benchmarks/gateway_bench.py` (setup: `benchmarks/setup_gateway_peers.sh`).",
        "",
        "| measure | result | target | met |",
        "|---|---|---|---|",
    ]
    for peer, target in (("LiteLLM", 20.0), ("nginx", 0.2)):
        if peer in tp[0]:
            ratio = g / median_of(tp, peer, "rps")
            lines.append(
                f"| throughput vs {peer} ({gw}) | {ratio:.2f}x | >= {target:g}x | {'yes' if ratio >= target else 'no'} |"
            )
        else:
            lines.append(
                f"| throughput vs {peer} | not measured ({peer} not installed) | >= {target:g}x | - |"
            )
    a50, a99, at = median_of(lat, "added_p50"), median_of(lat, "added_p99"), median_of(lat, "added_ttft_p50")
    lines += [
        f"| added latency p50, 16 streams | {a50:+.2f} ms | <= 1 ms | {'yes' if a50 <= 1 else 'no'} |",
        f"| added latency p99, 16 streams | {a99:+.2f} ms | <= 5 ms | {'yes' if a99 <= 5 else 'no'} |",
        f"| added TTFT p50, 16 streams | {at:+.2f} ms | <= 2 ms | {'yes' if at <= 2 else 'no'} |",
    ]
    if pre:
        t_ratio = median_of(pre, "round-robin_ttft_p50") / median_of(pre, "prefix_ttft_p50")
        r_ratio = median_of(pre, "prefix_rps") / median_of(pre, "round-robin_rps")
        lines += [
            f"| prefix vs round-robin TTFT p50 (2 halo serve nodes) | {t_ratio:.2f}x lower | > 1x | {'yes' if t_ratio > 1 else 'no'} |",
            f"| prefix vs round-robin throughput | {r_ratio:.2f}x | > 1x | {'yes' if r_ratio > 1 else 'no'} |",
        ]
    lines += ["", "Throughput, non-streaming, 32 connections (wrk), one fake upstream process:", ""]
    lines += ["| path | req/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for name in tp[0]:
        lines.append(
            f"| {name} | {median_of(tp, name, 'rps'):,.0f} | {median_of(tp, name, 'p50_ms'):.2f} |"
            f" {median_of(tp, name, 'p99_ms'):.2f} |"
        )
    lines += [
        "",
        f"Streams (16 concurrent, TTFT 20 ms, 64 tokens at 2 ms): end-to-end p50 direct"
        f" {median_of(lat, 'e2e_p50_direct'):.2f} ms, via gateway {median_of(lat, 'e2e_p50_gateway'):.2f} ms;"
        f" TTFT p50 direct {median_of(lat, 'ttft_p50_direct'):.2f} ms, via gateway"
        f" {median_of(lat, 'ttft_p50_gateway'):.2f} ms. Added p50 per round: {per_round(lat, 'added_p50')} ms;"
        f" p99: {per_round(lat, 'added_p99')} ms.",
    ]
    if pre:
        lines += [
            "",
            f"Shared-prefix chat ({PREFIXES} system prompts of {PREFIX_WORDS} words, 16 more words per request,"
            f" 8 tokens out, 2 nodes x {SLOTS} slots, concurrency 2, {PREFIX_REQUESTS} requests): prompt tokens served from the"
            f" nodes' KV caches: round-robin {median_of(pre, 'round-robin_cache_hit'):.0%},"
            f" prefix {median_of(pre, 'prefix_cache_hit'):.0%}. TTFT p50"
            f" round-robin {median_of(pre, 'round-robin_ttft_p50'):.0f} ms, prefix"
            f" {median_of(pre, 'prefix_ttft_p50'):.0f} ms; throughput round-robin"
            f" {median_of(pre, 'round-robin_rps'):.2f} req/s, prefix {median_of(pre, 'prefix_rps'):.2f} req/s."
            " Per round, TTFT p50 round-robin / prefix:"
            f" {', '.join(_ttft_pair(r) for r in pre)} ms"
            " (a cache miss costs over a second here, a hit ~150 ms, so the median of a round falls on either"
            " side); throughput ratio"
            f" {', '.join(_rps_ratio(r) for r in pre)}.",
        ]
    lines += [
        "",
        "The fake upstream is one Python process and caps every path (see direct); nginx nearly reaches that",
        "cap, so against a faster upstream nginx's lead would be larger. LiteLLM runs without its",
        "Postgres-backed key store (it does less per request than the gateway, which checks a key and",
        "records usage). The gateway forwards requests over pooled keep-alive connections and relays each",
        "streamed token from its socket callback (one parse, one write; docs/gateway.md). What it adds to",
        "a stream is mostly CPU contention: the load generator, the upstream and the gateway share 2 cores.",
        "For the same reason a second worker process loses to one here (not measured on a machine with",
        "cores to spare).",
    ]
    return "\n".join(lines)


def write_section(text: str, marks: tuple[str, str] = (MARK_START, MARK_END)) -> None:
    """Replace the section between ``marks`` (the gateway's by default) of BENCHMARKS.md (appended when missing)."""
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text()
    start, end = marks
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def main() -> int:
    """Run the parts and print (or write) the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="wrk duration per measurement")
    p.add_argument(
        "--parts",
        default="throughput,latency,prefix",
        help="parts to run; the others are taken from the last run's benchmarks/results/gateway.json",
    )
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: run benchmarks/setup_gateway_peers.sh", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    parts = {x.strip() for x in args.parts.split(",")}
    saved: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    tp: list[dict[str, dict[str, float]]] = [] if "throughput" in parts else saved.get("throughput", [])
    lat: list[dict[str, float]] = [] if "latency" in parts else saved.get("latency", [])
    pre: list[dict[str, float]] = [] if "prefix" in parts else saved.get("prefix", [])
    for r in range(args.rounds):
        if "throughput" in parts:
            tp.append(throughput_round(tmp, args.seconds))
            print(f"round {r + 1} throughput: {tp[-1]}", file=sys.stderr, flush=True)
        if "latency" in parts:
            lat.append(latency_round(tmp))
            print(f"round {r + 1} latency: {lat[-1]}", file=sys.stderr, flush=True)
    if "prefix" in parts:
        serve = [
            "--parallel",
            str(SLOTS),
            "--ctx-size",
            str(SLOTS * 2048),
            "--threads",
            "1",
            "--alias",
            "smol",
        ]
        with RemoteServer(serve) as a, RemoteServer(serve) as b:
            for r in range(args.rounds):
                pre.append(prefix_round(tmp, [a, b], r))
                print(f"round {r + 1} prefix: {pre[-1]}", file=sys.stderr, flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"throughput": tp, "latency": lat, "prefix": pre}, indent=1))
    text = render(tp, lat, pre)
    print(text)
    if args.write:
        write_section(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
