"""The CLI's side of the cluster: connect to Ray as a driver and talk to the controller actor."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from haloserve.cluster import CONTROLLER_NAME, NAMESPACE, NODE_PIN, NODE_RESOURCE_PREFIX
from haloserve.errors import HaloError

CALL_TIMEOUT = 120.0


def connect(address: str) -> None:
    """``ray.init`` against ``address`` quietly (Ray's banner is not ours to print)."""
    import ray

    if ray.is_initialized():
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ray.init(
                address=address,
                namespace=NAMESPACE,
                logging_level=logging.ERROR,
                log_to_driver=False,
                include_dashboard=False,
            )
        except Exception as exc:  # ConnectionError and Ray's own errors: one line for the user
            raise HaloError(f"cannot connect to the cluster at {address}: {exc}".splitlines()[0]) from None


def controller() -> Any:
    """The controller actor (the head must have been started by ``halo cluster start``)."""
    import ray

    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        raise HaloError(
            "no halo controller in this Ray cluster: run `halo cluster start` on the head"
        ) from None


def create_controller(head: str, state_dir: Path) -> Any:
    """Start (or find) the detached controller, pinned to the head node, and wait until it answers."""
    import ray

    from haloserve.cluster.controller import Controller

    actor = (
        ray.remote(Controller)
        .options(
            name=CONTROLLER_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_concurrency=16,
            num_cpus=0,
            resources={f"{NODE_RESOURCE_PREFIX}{head}": NODE_PIN},
        )
        .remote({"state_dir": str(state_dir), "backends_file": str(state_dir / "backends.json")})
    )
    call(actor.ping)
    return actor


def call(method: Any, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
    """``ray.get(method.remote(*args))``; an ``{"error": ...}`` answer becomes a one-line HaloError."""
    import ray

    try:
        result = ray.get(method.remote(*args), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise HaloError(f"the controller did not answer within {timeout:g} s") from None
    except ray.exceptions.RayError as exc:
        raise HaloError(f"the controller failed: {str(exc).splitlines()[0]}") from None
    if isinstance(result, dict) and result.get("error"):
        raise HaloError(str(result["error"]))
    return result


def kill_controller() -> bool:
    """Stop the replicas and the controller (head stop); False when there was none."""
    import ray

    try:
        actor = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    with contextlib.suppress(Exception):
        ray.get(actor.shutdown.remote(), timeout=60)
    ray.kill(actor, no_restart=True)
    return True
