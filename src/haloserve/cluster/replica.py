"""One replica: a detached Ray actor that runs ``halo serve`` (or ``halo rpc-worker``) on its node.

The actor launches the process detached (:func:`procs.launch_detached`) on a free port, records it in
``<state dir>/replicas/<id>.json`` and watches it. When the process dies the actor exits, and Ray
restarts the actor (``max_restarts=-1``) in the same placement-group bundle, so on the same node: the new
incarnation counts the restart and launches again, after a backoff (1, 2, 4, 8 s) while launches keep
failing before their ``/health`` answered; after :data:`MAX_FAILURES` such failures, or at once when the
model file is missing on the node, the replica stays ``failed`` with the cause and is not started
again (so is a process that exits with status 2 before it was ever healthy: halo's status for a
refused flag or setting, which no restart fixes). A new incarnation that finds its process still
running (the actor worker died, or Ray's head was lost and came back) adopts it instead of starting a
second one.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from haloserve.cluster import procs
from haloserve.cluster.spec import Deployment

MAX_FAILURES = 5
USAGE_EXIT = 2  # halo's exit status for a refused flag or setting (ConfigError): failed at once
STATE_DIR_ENV = "HALO_CLUSTER_DIR"
HOST_ENV = "HALO_CLUSTER_HOST"
NODE_ENV = "HALO_CLUSTER_NODE"


def state_dir() -> Path:
    """This node's cluster state directory (``HALO_CLUSTER_DIR``, set by start/join for Ray's processes)."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env) if env else Path.home() / ".local" / "state" / "haloserve" / "cluster"


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def reuse_port(host: str, port: object) -> int:
    """The port an earlier launch used when it is free again (the gateway knows that URL), else a new one."""
    if isinstance(port, int) and port > 0:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return port
            except OSError:
                pass
    return free_port(host)


def backoff(failures: int) -> float:
    """Seconds to wait before launch number ``failures + 1`` of a process that keeps failing."""
    return 0.0 if failures <= 0 else min(30.0, 2.0 ** (failures - 1))


def _load_from_metrics(text: str) -> float | None:
    total, seen = 0.0, False
    for name in ("halo_slots_busy", "halo_queue_depth"):
        m = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.M)
        if m:
            total += float(m.group(1))
            seen = True
    return total if seen else None


class Replica:
    """The actor body (``ray.remote`` is applied by the controller, so this module imports no Ray)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.id: str = config["id"]
        self.role: str = config.get("role", "serve")
        self.node: str = config["node"]
        self.dep = Deployment.model_validate(config["deployment"])
        self.rpc: list[str] = list(config.get("rpc", []))
        self.host = os.environ.get(HOST_ENV) or config.get("host") or "127.0.0.1"
        base = state_dir()
        self.record_path = base / "replicas" / f"{self.id}.json"
        self.log_path = base / "logs" / f"{self.id}.log"
        self.state = "starting"
        self.error: str | None = None
        self.pid: int | None = None
        self.port: int | None = None
        self.restarts = 0
        self.load: float | None = None
        self.stopped = threading.Event()
        threading.Thread(target=self._run, name=f"halo-replica-{self.id}", daemon=True).start()

    # -- the actor's methods -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Where this replica is and how it is doing."""
        return {
            "id": self.id,
            "role": self.role,
            "node": self.node,
            "url": self.url,
            "state": self.state,
            "restarts": self.restarts,
            "error": self.error,
            "pid": self.pid,
            "load": self.load,
        }

    @property
    def url(self) -> str | None:
        """``http://host:port`` of halo serve, ``host:port`` of an RPC worker."""
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.role == "rpc-worker" else f"http://{host}:{self.port}"

    def stop(self) -> bool:
        """End the process for good (the replica is being removed)."""
        self.stopped.set()
        if self.pid:
            procs.kill_all([self.pid], grace=10)
        self.record_path.unlink(missing_ok=True)
        self.state = "stopped"
        return True

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the process's log on this node."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log on {self.node}: {exc.strerror})\n"
        return "\n".join(text.splitlines()[-lines:]) + "\n"

    # -- the watcher thread ----------------------------------------------------------------------------
    def _command(self, port: int) -> list[str]:
        if self.role == "rpc-worker":
            args = ["rpc-worker", "--host", self.host, "--port", str(port)]
        else:
            args = self.dep.serve_command(self.node, self.host, port, self.rpc)
        return [sys.executable, "-m", "haloserve", *args]

    def _fail(self, record: dict[str, Any], why: str) -> None:
        self.state, self.error = "failed", why
        record.update(pid=None, error=why, failed=True)
        procs.write_json(self.record_path, record)

    def _run(self) -> None:
        record = procs.read_json(self.record_path) or {}
        self.restarts = int(record.get("restarts", 0))
        failures = int(record.get("failures", 0))
        if record.get("failed"):
            self.state, self.error = "failed", record.get("error")
            return
        if procs.pid_alive(record.get("pid")) and record.get("port"):
            self.pid, self.port = int(record["pid"]), int(record["port"])  # adopt the running process
        else:
            if record.get("pid"):  # an earlier launch of this replica died: this is a restart
                self.restarts += 1
            if failures >= MAX_FAILURES:
                self._fail(
                    record,
                    f"{self.role} failed {failures} times in a row before becoming healthy "
                    f"(last: {record.get('error') or 'see halo cluster logs'})",
                )
                return
            if self.role == "serve" and not Path(self.dep.path_on(self.node)).is_file():
                self._fail(record, f"model file not found on node {self.node}: {self.dep.path_on(self.node)}")
                return
            self.stopped.wait(backoff(failures))
            if self.stopped.is_set():
                return
            self.port = reuse_port(self.host, record.get("port"))
            self.pid = procs.launch_detached(self._command(self.port), self.log_path)
            record.update(pid=self.pid, port=self.port, failures=failures + 1, started=time.time())
        record.update(restarts=self.restarts, node=self.node, error=None)
        procs.write_json(self.record_path, record)
        self._watch(record)

    def _watch(self, record: dict[str, Any]) -> None:
        import httpx

        next_load = 0.0
        with httpx.Client(timeout=2.0) as client:
            while not self.stopped.is_set():
                if not procs.pid_alive(self.pid):
                    if self.stopped.is_set():
                        return
                    code = procs.exit_status(self.log_path)
                    why = f"{self.role} exited with status {code}: {self._last_line()}"
                    if code == USAGE_EXIT and self.state != "ready":  # a refused flag does not fix itself
                        self._fail(record, why)
                        return
                    record["error"] = why
                    procs.write_json(self.record_path, record)
                    self.state = "restarting"
                    os._exit(1)  # Ray restarts the actor, which relaunches (see the module docstring)
                healthy = self._healthy(client)
                if healthy and self.state != "ready":
                    self.state, self.error = "ready", None
                    record.update(failures=0, error=None)
                    procs.write_json(self.record_path, record)
                elif not healthy and self.state == "ready":
                    self.state = "unhealthy"
                if self.role == "serve" and healthy and time.monotonic() >= next_load:
                    next_load = time.monotonic() + 2.0
                    self.load = self._load(client)
                self.stopped.wait(0.5)

    def _healthy(self, client: Any) -> bool:
        if self.role == "rpc-worker":
            try:
                with socket.create_connection((self.host, self.port or 0), timeout=2):
                    return True
            except OSError:
                return False
        try:
            return bool(client.get(f"{self.url}/health").status_code == 200)
        except Exception:  # any transport failure means "not healthy yet"
            return False

    def _load(self, client: Any) -> float | None:
        try:
            return _load_from_metrics(client.get(f"{self.url}/metrics").text)
        except Exception:  # load is informational; a failed scrape shows as unknown
            return None

    def _last_line(self) -> str:
        lines = [line for line in self.log_tail(20).splitlines() if line.strip()]
        return lines[-1][:300] if lines else "(no output)"
