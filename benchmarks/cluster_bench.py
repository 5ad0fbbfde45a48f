"""halo cluster against the same flow by hand: deploy to first answer, recovery from a killed replica, discovery cost.

Three parts, each repeated ``--rounds`` times (medians reported):

1. **Deploy**: from ``halo cluster deploy MODEL --replicas 2`` (bundled model, a head and one joined node
   on this machine, as in tests/cluster; the cluster is started once, before the clock) to the first chat
   request answered through the cluster's gateway; against the same by hand: two ``halo serve``
   processes, each under a shell restart loop (what a compose file with ``restart: always`` does), and
   ``halo gateway --backend A --backend B``, all started at once, to the first request answered.
2. **Recovery**: SIGKILL one replica's ``halo serve`` while one client sends requests through the gateway
   one after another; the time until a request lands on the replacement process (its own request counter
   moves), and until the replacement answers ``/health`` at all (the restart alone). Cluster: Ray restarts
   the replica's actor; by hand: the shell loop restarts the process and the static gateway's health
   checks re-admit it.
3. **Discovery cost**: the gateway's added latency (p50, p95 over direct) with its backend from
   ``--backends-file`` (the file ``halo cluster`` keeps) against a static ``--backend``, one fake upstream
   (``haloserve.testing.upstream``) so no model dominates; sequential non-streamed requests, the three
   paths alternating in short blocks so that the machine's load drifts over all of them alike.

``.venv/bin/python benchmarks/cluster_bench.py --rounds 3 --write``; ``--smoke`` runs part 3 briefly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import BODY, median_of, process, wait_http, write_section

from haloserve.bench.metrics import percentile
from haloserve.bench.preflight import cpu_model
from haloserve.bundled import bundled_model_path
from haloserve.cluster import procs
from haloserve.testing.remote import free_port
from haloserve.testing.upstream_cli import spawn
from haloserve.testing.upstream_config import UpstreamConfig

ROOT = Path(__file__).resolve().parents[1]
MARKS = ("<!-- cluster:start -->", "<!-- cluster:end -->")
RESULTS = ROOT / "benchmarks" / "results" / "cluster.json"
HALO = [sys.executable, "-m", "haloserve"]
NAME = "smol"
# As tests/cluster: 1.46 GiB a node, a replica (2048 context, 2 slots) needs 1.23 GiB: one per node.
NODE_MEMORY, CTX, SLOTS, THREADS = "1500MiB", "2048", "2", "1"
RESTART_DELAY = 0.1  # seconds the by-hand loop waits before a restart (Docker's first restart delay)
DEADLINE = 300.0  # seconds any one timed wait may take before the round fails


def load() -> str:
    """The 1-minute load average, for the record next to each figure."""
    return f"{os.getloadavg()[0]:.1f}"


def chat(url: str, i: int, timeout: float = 60) -> bool:
    """One short chat completion through ``url``; True when it was answered."""
    body = {"model": NAME, "messages": [{"role": "user", "content": f"Name a colour, {i}"}], "max_tokens": 4}
    with contextlib.suppress(httpx.HTTPError):
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)
        return r.status_code == 200 and bool(r.json().get("choices"))
    return False


def served(url: str) -> float | None:
    """Chat requests the process at ``url`` has answered (None while nothing listens there)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("halo_requests_total{") and "chat" in line
    )


def healthy(url: str) -> bool:
    """``url`` answers ``/health`` with 200."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    return False


def answers(url: str) -> bool:
    """Something answers HTTP at ``url`` (any status)."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=5)
        return True
    return False


def until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE, step: float = 0.1) -> float:
    """Poll ``predicate`` until truthy; the monotonic time it became so."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"no {what} after {timeout:g} s")
        time.sleep(step)
    return time.monotonic()


def first_answer(gateway: str, began: float, replicas: Callable[[], list[str]]) -> dict[str, float]:
    """Seconds from ``began`` to a first replica answering ``/health`` 200 and to the first chat request
    answered through ``gateway`` (what lies between is the gateway's admission)."""
    out: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:  # its own thread: a request to the gateway may wait in its queue meanwhile
        while not done.is_set():
            if any(healthy(u) for u in replicas()):
                out["replica_healthy"] = time.monotonic() - began
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    i = iter(range(1 << 30))
    try:
        out["deploy_first"] = (
            until(lambda: chat(gateway, next(i), timeout=30), "answer through the gateway") - began
        )
    finally:
        done.set()
        watcher.join()
    return out


def recovery(
    gateway: str, victim: str, kill: Callable[[], None], alive: Callable[[], bool] = lambda: True
) -> dict[str, float]:
    """Kill the process behind ``victim`` under a sequential load through ``gateway``; part 2's times
    (``alive`` says whether what should restart it still runs)."""
    out: dict[str, float] = {"failed": 0.0, "answered": 0.0}
    kill()
    began = time.monotonic()
    until(lambda: served(victim) is None, "death of the victim", timeout=30, step=0.02)
    i = 0
    while time.monotonic() - began < DEADLINE:
        if not alive():
            raise RuntimeError("the cluster's Ray head is gone (killed from outside the benchmark?)")
        i += 1
        out["answered" if chat(gateway, i) else "failed"] += 1
        now = time.monotonic() - began
        count = served(victim)
        if count is not None and "back" not in out and healthy(victim):
            out["back"] = now  # the replacement answers /health 200: the restart alone
        if count:  # the replacement (its counter began at 0) answered a request through the gateway
            out.setdefault("back", now)
            out["serving"] = now
            return out
    raise TimeoutError(f"{victim} did not serve again through the gateway within {DEADLINE:g} s")


# -- the cluster -------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A head (with its gateway) and one joined node, each with a private state directory."""

    root: Path
    ray_tmp: Path  # Ray's session files (RAY_TMPDIR), kept apart from any other Ray's /tmp/ray
    port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        """The environment of every ``halo cluster`` command here."""
        return {**os.environ, "RAY_TMPDIR": str(self.ray_tmp)}

    def halo(self, *args: str, node: str = "head", timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``halo cluster ARGS --state-dir <node's>``, checked."""
        cmd = [*HALO, "cluster", *args, "--state-dir", str(self.root / node)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"halo cluster {args[0]} failed: {out.stdout}{out.stderr}")
        return out

    @property
    def gateway(self) -> str:
        """The head's gateway."""
        return f"http://127.0.0.1:{self.gateway_port}"

    def deploy_cmd(self, model: Path) -> list[str]:
        """``halo cluster deploy`` of two replicas of the bundled model."""
        serve = f"--threads {THREADS}"
        flags = [
            "--name",
            NAME,
            "--replicas",
            "2",
            "--ctx-size",
            CTX,
            "--parallel",
            SLOTS,
            f"--serve-args={serve}",
        ]
        return [*HALO, "cluster", "deploy", str(model), *flags, "--state-dir", str(self.root / "head")]

    def launched(self) -> list[tuple[str, float]]:
        """(URL, wall-clock launch time) of each ``halo serve`` the replicas' records on the nodes name."""
        found = []
        for path in self.root.glob("*/replicas/*.json"):
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(path.read_text())
                if rec.get("port") and rec.get("started"):
                    found.append((f"http://127.0.0.1:{rec['port']}", float(rec["started"])))
        return found

    def ray_alive(self) -> bool:
        """The head's GCS, as ``halo cluster start`` recorded it, still runs."""
        pids = json.loads((self.root / "head" / "node.json").read_text()).get("ray_pids", [])
        return any("gcs_server" in " ".join(procs.cmdline(p) or []) for p in pids)

    def replicas(self) -> list[dict[str, Any]]:
        """The deployment's replicas as ``status --json`` lists them."""
        deps = json.loads(self.halo("status", "--json").stdout)["deployments"]
        return [r for d in deps if d["name"] == NAME for r in d["replica_list"]]


@contextlib.contextmanager
def cluster(tmp: Path) -> Iterator[Cluster]:
    """Start the head and join a node; stop exactly what was started, node by node."""
    # Short: Ray's socket paths under it must stay within the 107 bytes a Unix socket's name may take.
    c = Cluster(tmp / "cluster", Path(tempfile.mkdtemp(prefix="cb-ray-")))
    nodes = ("head", "n2")
    mem = ("--gpu-memory", NODE_MEMORY, "--num-cpus", "1")
    started: list[str] = []
    try:
        started.append("head")
        c.halo("start", "--name", "head", *mem, "--port", str(c.port), "--gateway-port", str(c.gateway_port))
        started.append("n2")
        c.halo("join", f"127.0.0.1:{c.port}", "--name", nodes[1], *mem, node=nodes[1])
        until(lambda: answers(c.gateway), "gateway", timeout=120)  # its /health is 503 until a backend is in
        yield c
    finally:
        for node in reversed(started):
            subprocess.run(
                [*HALO, "cluster", "stop", "--state-dir", str(c.root / node)],
                capture_output=True,
                timeout=300,
                env=c.env,
            )
        shutil.rmtree(c.ray_tmp, ignore_errors=True)


def cluster_round(c: Cluster, model: Path) -> dict[str, float]:
    """Parts 1 and 2 on the cluster: deploy, first answer, kill a replica, recovery, remove."""
    began, wall = time.monotonic(), time.time()
    deploy = subprocess.Popen(
        c.deploy_cmd(model), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=c.env
    )
    try:
        out = first_answer(c.gateway, began, lambda: [u for u, _ in c.launched()])
        out["replica_launched"] = min(t for _, t in c.launched()) - wall
        out["load_deploy"] = os.getloadavg()[0]
        text = deploy.communicate(timeout=DEADLINE)[0]
        if deploy.returncode != 0:
            raise RuntimeError(f"halo cluster deploy failed: {text}")
        out["deploy_returned"] = time.monotonic() - began
    finally:
        if deploy.poll() is None:
            deploy.kill()
    urls = [r["url"] for r in c.replicas()]
    until(lambda: all(u and served(u) is not None for u in urls), "two replicas")
    victim = c.replicas()[1]
    out.update(
        recovery(c.gateway, victim["url"], lambda: os.kill(victim["pid"], signal.SIGKILL), c.ray_alive)
    )
    out["load_recovery"] = os.getloadavg()[0]
    c.halo("remove", NAME)
    return out


# -- by hand -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def by_hand(tmp: Path, model: Path) -> Iterator[tuple[str, list[str], list[Path]]]:
    """Two ``halo serve`` under shell restart loops and a static gateway, started at once.

    Yields (gateway URL, replica URLs, pid files of the current ``halo serve`` processes)."""
    ports = [free_port(), free_port()]
    pidfiles = [tmp / f"serve-{p}.pid" for p in ports]
    with contextlib.ExitStack() as stack:
        for port, pidfile in zip(ports, pidfiles, strict=True):
            serve = [*HALO, "serve", "--model", str(model), "--alias", NAME, "--port", str(port)]
            serve += ["--ctx-size", CTX, "--parallel", SLOTS, "--threads", THREADS]
            loop = (
                f"while :; do {shlex.join(serve)} & echo $! > {pidfile}; wait $!; sleep {RESTART_DELAY}; done"
            )
            # The loop's own process group, so that stopping it takes its current halo serve too.
            stack.enter_context(_group(["bash", "-c", loop], tmp / f"loop-{port}.log"))
        gw = free_port()
        backends = [x for p in ports for x in ("--backend", f"http://127.0.0.1:{p}")]
        stack.enter_context(process([*HALO, "gateway", "--port", str(gw), *backends], tmp / f"gw-{gw}.log"))
        yield f"http://127.0.0.1:{gw}", [f"http://127.0.0.1:{p}" for p in ports], pidfiles


@contextlib.contextmanager
def _group(cmd: list[str], log: Path) -> Iterator[None]:
    """``cmd`` as the leader of a new process group, SIGKILLed as a group at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def hand_round(tmp: Path, model: Path) -> dict[str, float]:
    """Parts 1 and 2 by hand."""
    began = time.monotonic()
    with by_hand(tmp, model) as (gateway, urls, pidfiles):
        out = {**first_answer(gateway, began, lambda: urls), "load_deploy": os.getloadavg()[0]}
        until(lambda: all(served(u) is not None for u in urls), "two replicas")
        pid = int(pidfiles[1].read_text())
        out.update(recovery(gateway, urls[1], lambda: os.kill(pid, signal.SIGKILL)))
        out["load_recovery"] = os.getloadavg()[0]
    return out


# -- part 3: what discovery costs per request ---------------------------------------------------------


def latency_round(tmp: Path, requests: int, block: int) -> dict[str, float]:
    """Added latency p50/p95 (ms over direct) of a static and a file-discovered gateway, alternating."""
    with spawn(UpstreamConfig()) as up:
        backends = tmp / "backends.json"
        backends.write_text(json.dumps({"backends": [{"url": up, "models": ["fake-model"]}]}))
        ports = {"static": free_port(), "discovery": free_port()}
        args = {"static": ["--backend", up], "discovery": ["--backends-file", str(backends)]}
        with contextlib.ExitStack() as stack:
            for k, port in ports.items():
                cmd = [*HALO, "gateway", "--port", str(port), *args[k]]
                stack.enter_context(process(cmd, tmp / f"gw-{k}-{port}.log"))
                wait_http(f"http://127.0.0.1:{port}/ready")
            urls = {"direct": up, **{k: f"http://127.0.0.1:{p}" for k, p in ports.items()}}
            times = _alternate(urls, requests, block)
    p = {k: (percentile(sorted(v), 50), percentile(sorted(v), 95)) for k, v in times.items()}
    out = {f"{k}_{q}": p[k][i] for k in p for i, q in enumerate(("p50", "p95"))}
    for k in ("static", "discovery"):
        out[f"added_{k}_p50"] = p[k][0] - p["direct"][0]
        out[f"added_{k}_p95"] = p[k][1] - p["direct"][1]
    out["discovery_minus_static_p50"] = p["discovery"][0] - p["static"][0]
    out["discovery_minus_static_p95"] = p["discovery"][1] - p["static"][1]
    out["requests"] = float(requests)
    out["load"] = os.getloadavg()[0]
    return out


def _alternate(urls: dict[str, str], requests: int, block: int) -> dict[str, list[float]]:
    """``requests`` sequential POSTs to each URL in blocks of ``block``, the order rotating per block."""
    headers = {"Content-Type": "application/json"}
    clients = {k: httpx.Client(base_url=u, headers=headers, timeout=30) for k, u in urls.items()}
    times: dict[str, list[float]] = {k: [] for k in urls}
    try:
        for c in clients.values():  # warm: connections open, code paths hot
            for _ in range(min(50, block)):
                c.post("/v1/chat/completions", content=BODY).raise_for_status()
        order = list(urls)
        for _ in range(max(1, requests // block)):
            order = order[1:] + order[:1]
            for k in order:
                c, sink = clients[k], times[k]
                for _ in range(block):
                    t = time.perf_counter()
                    r = c.post("/v1/chat/completions", content=BODY)
                    sink.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
    finally:
        for c in clients.values():
            c.close()
    return {k: v for k, v in times.items()}


# -- report ------------------------------------------------------------------------------------------


def _each(rounds: list[dict[str, float]], key: str, fmt: str = "{:.1f}") -> str:
    return ", ".join(fmt.format(r[key]) for r in rounds if key in r)


def _med(rounds: list[dict[str, float]], key: str) -> str:
    """The median of ``key`` over rounds, in seconds, one decimal (``admitted``: first answer - healthy)."""
    if key == "admitted":
        vals = [r["deploy_first"] - r["replica_healthy"] for r in rounds if "replica_healthy" in r]
    else:
        vals = [r[key] for r in rounds if key in r]
    return f"{statistics.median(vals):.1f}" if vals else "n/a"


def render(clu: list[dict[str, float]], hand: list[dict[str, float]], lat: list[dict[str, float]]) -> str:
    """The BENCHMARKS.md section."""
    loads = [r[k] for r in clu + hand for k in ("load_deploy", "load_recovery") if k in r]
    loads += [r["load"] for r in lat]
    span = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"
    lines = [
        "## halo cluster",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, 1-minute load average {span} during the runs"
        " (shared with other work: read single figures with care).",
        f"Medians of {max(len(clu), len(lat))} rounds; `benchmarks/cluster_bench.py --rounds 3 --write`.",
        "",
        "| measure | halo cluster | by hand | cluster vs hand | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, what in (
        ("deploy_first", "deploy to first answer through the gateway, s"),
        ("replica_healthy", "deploy to a first replica answering /health 200, s"),
        ("serving", "SIGKILL of a replica to a request served by its replacement, s"),
        ("back", "SIGKILL to the replacement answering /health, s"),
    ):
        if clu and hand:
            a, b = median_of(clu, key), median_of(hand, key)
            lines.append(f"| {what} | {a:.1f} | {b:.1f} | {a / b:.2f}x | - | - |")
    if lat:
        d50, d95 = median_of(lat, "discovery_minus_static_p50"), median_of(lat, "discovery_minus_static_p95")
        lines += [
            f"| gateway added latency p50, discovery vs static | {median_of(lat, 'added_discovery_p50'):+.3f} ms"
            f" | {median_of(lat, 'added_static_p50'):+.3f} ms | {d50:+.3f} ms | < 0.1 ms | {'yes' if d50 < 0.1 else 'no'} |",
            f"| gateway added latency p95, discovery vs static | {median_of(lat, 'added_discovery_p95'):+.3f} ms"
            f" | {median_of(lat, 'added_static_p95'):+.3f} ms | {d95:+.3f} ms | - | - |",
        ]
    if clu and hand:
        fails = sum(r["failed"] for r in clu), sum(r["failed"] for r in hand)
        lines += [
            "",
            f"Per round (cluster; by hand), seconds: deploy to first answer {_each(clu, 'deploy_first')};"
            f" {_each(hand, 'deploy_first')}. SIGKILL to served by the replacement {_each(clu, 'serving')};"
            f" {_each(hand, 'serving')}. SIGKILL to /health 200 {_each(clu, 'back')}; {_each(hand, 'back')}."
            f" `halo cluster deploy` itself returned after {_each(clu, 'deploy_returned')} s (it waits for"
            f" every replica). Requests through the gateway that failed during the recoveries: {fails[0]:.0f}"
            f" (cluster), {fails[1]:.0f} (by hand), of {sum(r['answered'] + r['failed'] for r in clu + hand):.0f}.",
            "",
            f"Setup: bundled model, 2 replicas of {CTX} context, {SLOTS} slots, {THREADS} thread each. Cluster: a"
            f" head and one joined node on this machine ({NODE_MEMORY} each, so one replica a node), started"
            " before the clock; its gateway is already running when `deploy` starts. By hand: two `halo serve`"
            f" each in a `while :; do halo serve ...; sleep {RESTART_DELAY}; done` loop and `halo gateway"
            " --backend A --backend B`, all started when the clock starts. Recovery: one client sends chat"
            " requests through the gateway one after another; a replacement counts as serving when its own"
            " request counter moves. Both gateways run with the default health checks (every 5 s)"
            " and slow start.",
            "",
            f"Where the time goes. Deploy: the cluster's first `halo serve` starts {_med(clu, 'replica_launched')} s"
            " after `deploy` does (the CLI's Python and Ray driver, `halo plan`, a placement group and a Ray actor"
            " per replica); by hand the shell starts it at once. From a healthy replica to the first answer"
            f" through the gateway: {_med(clu, 'admitted')} s with the backends file (the controller sees the"
            " replica ready and writes the file, the gateway re-reads it within a second and probes the new"
            f" backend) against {_med(hand, 'admitted')} s with a static list (probed every second until its"
            " first 200). Recovery: Ray restarts the actor, then the process, so the replacement answers later"
            " than under a shell loop; but the controller takes the dead replica out of the backends file and"
            " puts it back once ready, so the gateway admits it at its first 200, while a static gateway opens"
            " the dead backend's circuit on the refused connection and keeps it out for `--eject-time` (10 s)"
            " before a trial request, however soon it was back (by hand, a shorter `--eject-time` helps).",
        ]
    if lat:
        lines += [
            "",
            f"Discovery: {int(median_of(lat, 'requests')):,} sequential non-streamed requests per path per round"
            " (fake upstream, no delays, keep-alive), direct / static `--backend` / `--backends-file`"
            " alternating in short blocks. p50 ms direct, static, discovery:"
            f" {median_of(lat, 'direct_p50'):.3f}, {median_of(lat, 'static_p50'):.3f},"
            f" {median_of(lat, 'discovery_p50'):.3f}. Discovery - static p50 per round:"
            f" {_each(lat, 'discovery_minus_static_p50', '{:+.3f}')} ms; p95:"
            f" {_each(lat, 'discovery_minus_static_p95', '{:+.3f}')} ms, the size of one path's own spread"
            f" over rounds (static p95 {_each(lat, 'static_p95', '{:.2f}')} ms; discovery"
            f" {_each(lat, 'discovery_p95', '{:.2f}')} ms): at p95 this loaded machine resolves no difference."
            " The gateway reads the file off the"
            " request path (a stat once a second), so a request takes the same path either way. In the table,"
            " the gateway with `--backends-file` stands under halo cluster and the static one under by hand;"
            " what sets them apart is the median of the per-round differences.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the parts and print (or write) the section."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="deploy,latency", help="deploy (parts 1 and 2) and/or latency (part 3)")
    p.add_argument("--requests", type=int, default=6000, help="part 3: requests per path per round")
    p.add_argument("--block", type=int, default=100, help="part 3: requests per path before switching")
    p.add_argument("--smoke", action="store_true", help="part 3 only, one short round, nothing saved")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.parts, args.requests, args.block, args.write = 1, "latency", 300, 50, False
    parts = {x.strip() for x in args.parts.split(",")}
    saved: dict[str, Any] = (
        {} if args.smoke or not args.results.exists() else json.loads(args.results.read_text())
    )
    clu: list[dict[str, float]] = [] if "deploy" in parts else saved.get("cluster", [])
    hand: list[dict[str, float]] = [] if "deploy" in parts else saved.get("hand", [])
    lat: list[dict[str, float]] = [] if "latency" in parts else saved.get("latency", [])
    model = bundled_model_path()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as name:
        tmp = Path(name)
        if "deploy" in parts:
            with cluster(tmp) as c:
                for r in range(args.rounds):  # by hand first: it finds the model file cold as often as not
                    hand.append(hand_round(tmp, model))
                    print(f"round {r + 1} by hand: {hand[-1]}", file=sys.stderr, flush=True)
                    clu.append(cluster_round(c, model))
                    print(f"round {r + 1} cluster: {clu[-1]}", file=sys.stderr, flush=True)
        if "latency" in parts:
            for r in range(args.rounds):
                lat.append(latency_round(tmp, args.requests, args.block))
                print(f"round {r + 1} latency: {lat[-1]}", file=sys.stderr, flush=True)
    if not args.smoke:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({"cluster": clu, "hand": hand, "latency": lat}, indent=1))
    text = render(clu, hand, lat)
    print(text)
    print(f"took {time.monotonic() - began:.0f} s", file=sys.stderr)
    if args.write:
        write_section(text, MARKS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
