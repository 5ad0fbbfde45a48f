"""The controller: a detached, named Ray actor on the head that owns deployments and their replicas.

It places replicas (:mod:`placement` over the nodes' registered memory, each replica's bundles reserved
by a detached placement group pinned to the chosen nodes), creates their actors, re-places replicas whose
node is gone, persists the deployments in the head's state directory (so a new controller picks them
up), and writes the gateway's backends file whenever the set of ready replicas changes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from haloserve.cluster import MEMORY_RESOURCE, NAMESPACE, NODE_PIN, NODE_RESOURCE_PREFIX, procs
from haloserve.cluster.ledger import ReplicaRecord, live_nodes
from haloserve.cluster.placement import NodeRoom, PlacementError, place
from haloserve.cluster.replica import Replica
from haloserve.cluster.spec import Deployment

RemoteReplica = ray.remote(Replica)
REPLACE_BACKOFF = 5.0  # seconds between attempts to re-place a replica that fits nowhere now
RESTORE_GRACE = 60.0  # a new controller waits this long for the nodes of saved replicas to rejoin


class Controller:
    """The actor body; see the module docstring."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.dir = Path(config["state_dir"])
        self.backends_file = Path(config["backends_file"])
        self.host_of: dict[str, str] = {}
        self.lock = threading.RLock()
        self.deployments: dict[str, Deployment] = {}
        self.replicas: dict[str, list[ReplicaRecord]] = {}
        self.counter: dict[str, int] = {}
        self._written: list[dict[str, Any]] | None = None
        saved = procs.read_json(self.dir / "deployments.json") or {}
        for name, entry in saved.get("deployments", {}).items():
            self.deployments[name] = Deployment.model_validate(entry["deployment"])
            self.counter[name] = int(entry.get("counter", 0))
            self.replicas[name] = [
                ReplicaRecord(r["id"], r["nodes"], int(r.get("gen", 0)), int(r.get("moves", 0)))
                for r in entry.get("replicas", [])
            ]
        self.started = time.monotonic()
        # replicas saved by an earlier controller (Ray's head was lost): their processes may still serve,
        # so the backends file is left alone until they are adopted back or the grace has passed
        self.restoring = {r.id for reps in self.replicas.values() for r in reps}
        threading.Thread(target=self._loop, name="halo-controller", daemon=True).start()

    # -- API ------------------------------------------------------------------------------------------
    def ping(self) -> bool:
        """True (the CLI waits for this after creating the actor)."""
        return True

    def deploy(self, dep_data: dict[str, Any]) -> dict[str, Any]:
        """Add a deployment and place its replicas; ``{"error": ...}`` when it does not fit."""
        dep = Deployment.model_validate(dep_data)
        with self.lock:
            if dep.name in self.deployments:
                return {"error": f"{dep.name} is already deployed (halo cluster scale or remove it first)"}
            self.deployments[dep.name] = dep
            self.replicas[dep.name] = []
            self.counter.setdefault(dep.name, 0)
            error = self._add(dep, dep.replicas)
            if error:
                del self.deployments[dep.name], self.replicas[dep.name]
                return {"error": error}
            self._save()
        return {"ok": True, "replicas": [r.to_dict() for r in self.replicas[dep.name]]}

    def scale(self, name: str, count: int) -> dict[str, Any]:
        """Set the number of replicas of ``name``."""
        with self.lock:
            dep = self.deployments.get(name)
            if dep is None:
                return {"error": f"no deployment named {name} (see halo cluster status)"}
            have = self.replicas[name]
            if count > len(have):
                error = self._add(dep, count - len(have))
                if error:
                    return {"error": error}
            for r in reversed(have[count:]):
                self._destroy(r)
            del have[count:]
            self.deployments[name] = dep.model_copy(update={"replicas": count})
            self._save()
        return {"ok": True, "replicas": [r.to_dict() for r in self.replicas[name]]}

    def remove(self, name: str) -> dict[str, Any]:
        """Stop every replica of ``name`` and forget it."""
        with self.lock:
            if name not in self.deployments:
                return {"error": f"no deployment named {name} (see halo cluster status)"}
            for r in self.replicas.pop(name):
                self._destroy(r)
                self.restoring.discard(r.id)
            del self.deployments[name]
            self._save()
        self._write_backends()
        return {"ok": True}

    def status(self) -> dict[str, Any]:
        """Nodes with memory, deployments with their replicas (what ``halo cluster status`` shows)."""
        with self.lock:
            rooms = self._rooms(live_nodes())
            deps = [
                {
                    **dep.model_dump(include={"name", "path", "replicas", "split", "nodes", "strategy"}),
                    "need_mib": dep.need_mib,
                    "plan": dep.plan_summary,
                    "replica_list": [dict(r.status, nodes=r.nodes) for r in self.replicas[name]],
                }
                for name, dep in self.deployments.items()
            ]
        nodes = [
            {"name": n.name, "total_mib": n.total_mib, "used_mib": n.used_mib, "free_mib": n.free_mib}
            for n in rooms
        ]
        return {"nodes": nodes, "deployments": deps, "backends_file": str(self.backends_file)}

    def logs(self, name: str, lines: int = 50) -> dict[str, Any]:
        """The last ``lines`` of each replica's process log (collected from its node)."""
        with self.lock:
            if name not in self.deployments:
                return {"error": f"no deployment named {name} (see halo cluster status)"}
            targets = [(r.id, a) for r in self.replicas[name] for a in r.actors]
        out = []
        for rid, actor in targets:
            try:
                text = ray.get(actor.log_tail.remote(lines), timeout=10)
            except Exception as exc:  # a replica that is down has no log to give; say so
                text = f"(log unavailable: {type(exc).__name__})\n"
            out.append({"replica": rid, "log": text})
        return {"logs": out}

    def shutdown(self) -> bool:
        """Stop every replica (``halo cluster stop`` on the head); deployments stay saved."""
        with self.lock:
            for reps in self.replicas.values():
                for r in reps:
                    self._destroy(r)
        return True

    # -- placement -------------------------------------------------------------------------------------
    def _rooms(self, nodes: dict[str, dict[str, Any]]) -> list[NodeRoom]:
        rooms = {name: NodeRoom(name, info["total_mib"]) for name, info in nodes.items()}
        for name, reps in self.replicas.items():
            need = self.deployments[name].need_mib
            for r in reps:
                for node, mib in zip(r.nodes, need, strict=False):
                    if node in rooms:
                        rooms[node].used_mib += mib
                if r.nodes and r.nodes[0] in rooms:
                    room = rooms[r.nodes[0]]
                    room.replicas[name] = room.replicas.get(name, 0) + 1
        return sorted(rooms.values(), key=lambda n: n.name)

    def _add(self, dep: Deployment, count: int) -> str | None:
        try:
            chosen = place(
                self._rooms(live_nodes()), dep.name, dep.need_mib, count, dep.strategy, dep.candidates
            )
        except PlacementError as exc:
            return f"{exc.message}; {dep.plan_summary}"
        for nodes in chosen:
            self.counter[dep.name] += 1
            r = ReplicaRecord(f"{dep.name}-{self.counter[dep.name]}", nodes)
            self.replicas[dep.name].append(r)
            self._create(dep, r)
        return None

    def _create(self, dep: Deployment, r: ReplicaRecord) -> None:
        bundles = [
            {MEMORY_RESOURCE: float(mib), f"{NODE_RESOURCE_PREFIX}{node}": NODE_PIN}
            for node, mib in zip(r.nodes, dep.need_mib, strict=False)
        ]
        r.pg = placement_group(
            bundles, strategy="SPREAD", name=f"halo-pg-{r.id}.{r.gen}", lifetime="detached"
        )
        r.placed_at = time.monotonic()
        r.actors = []
        data = dep.model_dump()
        workers = [f"{r.id}-w{i}" for i in range(1, len(r.nodes))]
        configs = [{"id": r.id, "role": "serve", "node": r.nodes[0], "deployment": data}]
        configs += [
            {"id": wid, "role": "rpc-worker", "node": node, "deployment": data}
            for wid, node in zip(workers, r.nodes[1:], strict=True)
        ]
        # workers first: the server's --rpc names them once they report their endpoints (see _loop)
        for index, cfg in reversed(list(enumerate(configs))):
            if cfg["role"] == "serve" and len(configs) > 1:
                continue
            r.actors.insert(0, self._actor(r, index, cfg))

    def _actor(self, r: ReplicaRecord, index: int, cfg: dict[str, Any]) -> Any:
        strategy = PlacementGroupSchedulingStrategy(r.pg, placement_group_bundle_index=index)
        return RemoteReplica.options(
            name=f"halo-replica-{cfg['id']}.{r.gen}",
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
            max_concurrency=4,
            scheduling_strategy=strategy,
        ).remote(cfg)

    def _destroy(self, r: ReplicaRecord) -> None:
        for actor in r.actors:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=15)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        r.actors = []
        if r.pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(r.pg)
            r.pg = None

    # -- the reconcile loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                self._reconcile()
            except Exception as exc:  # the loop must outlive any one bad round; the next one retries
                print(f"halo controller: reconcile failed: {type(exc).__name__}: {exc}", flush=True)
            time.sleep(1.0)

    def _reconcile(self) -> None:
        nodes = live_nodes()
        with self.lock:
            work = [(self.deployments[n], r) for n, reps in self.replicas.items() for r in reps]
        for dep, r in work:
            with self.lock:
                if r not in self.replicas.get(dep.name, []):
                    continue
                if r.pg is None or any(node not in nodes for node in r.nodes):
                    self._replace(dep, r, nodes)
                    continue
                if len(r.actors) < len(r.nodes):  # a split replica waiting for its workers' endpoints
                    self._start_split_server(dep, r)
            self._refresh(r)
        self._write_backends()

    def _adopt(self, dep: Deployment, r: ReplicaRecord) -> bool:
        """A new controller finds the replica's group and actors still alive (same generation)."""
        from ray.util import get_placement_group

        try:
            r.pg = get_placement_group(f"halo-pg-{r.id}.{r.gen}")
            names = [r.id] if len(r.nodes) == 1 else [r.id, *(f"{r.id}-w{i}" for i in range(1, len(r.nodes)))]
            r.actors = [ray.get_actor(f"halo-replica-{n}.{r.gen}", namespace=NAMESPACE) for n in names]
        except ValueError:
            r.pg, r.actors = None, []
            return False
        return True

    def _replace(self, dep: Deployment, r: ReplicaRecord, nodes: dict[str, dict[str, Any]]) -> None:
        if time.monotonic() < r.retry_at:
            return
        gone = [n for n in r.nodes if n not in nodes]
        if r.pg is None and not r.actors and not gone and self._adopt(dep, r):
            return
        if gone and r.id in self.restoring and time.monotonic() - self.started < RESTORE_GRACE:
            r.status = {
                **r.status,
                "state": "pending",
                "error": f"waiting for node {', '.join(gone)} to rejoin",
            }
            return
        self._destroy(r)
        self.replicas[dep.name].remove(r)
        rooms = self._rooms(nodes)
        try:
            if not gone:  # the cluster came back: same nodes, so the replica adopts its running process
                (chosen,) = place(rooms, dep.name, dep.need_mib, 1, dep.strategy, r.nodes)
                if sorted(chosen) != sorted(r.nodes):
                    raise PlacementError("the old nodes no longer fit")
            else:
                (chosen,) = place(rooms, dep.name, dep.need_mib, 1, dep.strategy, dep.candidates)
        except PlacementError as exc:
            r.status = {
                **r.status,
                "state": "pending",
                "error": f"node {', '.join(gone)} gone; {exc.message}",
            }
            r.retry_at = time.monotonic() + REPLACE_BACKOFF
            self.replicas[dep.name].append(r)
            return
        r.moves += 1 if gone else 0
        r.nodes, r.gen = chosen, r.gen + 1
        r.status = {"id": r.id, "node": chosen[0], "state": "placing", "restarts": r.moves}
        self.replicas[dep.name].append(r)
        self._create(dep, r)
        self._save()

    def _start_split_server(self, dep: Deployment, r: ReplicaRecord) -> None:
        try:
            states = ray.get([a.status.remote() for a in r.actors], timeout=2)
        except Exception:
            return
        if all(s["state"] == "ready" for s in states):
            cfg = {
                "id": r.id,
                "role": "serve",
                "node": r.nodes[0],
                "deployment": dep.model_dump(),
                "rpc": [s["url"] for s in states],
            }
            r.actors.insert(0, self._actor(r, 0, cfg))
        else:
            bad = [s for s in states if s["state"] == "failed"]
            r.status = {
                **r.status,
                "state": "failed" if bad else "placing",
                "error": bad[0]["error"] if bad else None,
            }

    def _refresh(self, r: ReplicaRecord) -> None:
        if not r.actors or len(r.actors) < len(r.nodes):
            return
        try:
            states = ray.get([a.status.remote() for a in r.actors], timeout=2)
        except Exception:  # the actor is restarting or its node is unreachable this round
            r.status = {
                **r.status,
                "state": "restarting" if r.status.get("state") != "placing" else "placing",
            }
            return
        server, workers = states[0], states[1:]
        r.status = {**server, "restarts": server["restarts"] + r.moves, "workers": workers}

    def _write_backends(self) -> None:
        with self.lock:
            if self.restoring:
                settled = {
                    r.id for reps in self.replicas.values() for r in reps if r.status.get("state") == "ready"
                }
                self.restoring -= settled
                if self.restoring and time.monotonic() - self.started < RESTORE_GRACE:
                    return
                self.restoring = set()
            backends = [
                {
                    "url": r.status["url"],
                    "models": [name],
                    "labels": {"deployment": name, "replica": r.id, "node": r.nodes[0]},
                }
                for name, reps in self.replicas.items()
                for r in reps
                if r.status.get("state") == "ready" and r.status.get("url")
            ]
            # under the lock: the reconcile loop and a request (remove, scale) may both get here
            if backends != self._written:
                procs.write_json(self.backends_file, {"backends": backends})
                self._written = backends

    def _save(self) -> None:
        data = {
            "deployments": {
                name: {
                    "deployment": dep.model_dump(),
                    "counter": self.counter.get(name, 0),
                    "replicas": [r.to_dict() for r in self.replicas.get(name, [])],
                }
                for name, dep in self.deployments.items()
            }
        }
        procs.write_json(self.dir / "deployments.json", data)
