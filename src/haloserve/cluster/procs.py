"""Processes that outlive whoever started them: detached launch, liveness, and killing a tree.

``halo serve`` replicas and the head's gateway run in their own session, re-parented to init, so they
keep serving when Ray's head (and with it the raylets and actor workers) goes away; their pid files let a
later actor adopt them and ``halo cluster stop`` end them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def launch_detached(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in a new session, output appended to ``log_path``; returns its pid.

    A short-lived ``sh`` starts it in the background and exits, so the process is not a child of the
    caller (Ray kills an actor worker's children when the worker exits). A subshell waits for it and
    writes its exit status to ``<log>.exit`` (:func:`exit_status`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{log_path}.exit").unlink(missing_ok=True)
    script = '( "$@" >>"$0" 2>&1 </dev/null & echo $!; exec >/dev/null 2>&1; wait $!; echo $? >"$0.exit" ) &'
    out = subprocess.run(
        ["sh", "-c", script, str(log_path), *cmd],
        capture_output=True,
        text=True,
        start_new_session=True,
        env=env,
        check=True,
        timeout=30,
    )
    return int(out.stdout.strip())


def exit_status(log_path: Path, wait: float = 2.0) -> int | None:
    """The exit status :func:`launch_detached` recorded for the process logging to ``log_path``."""
    end = time.monotonic() + wait
    while True:
        try:
            return int(Path(f"{log_path}.exit").read_text().strip())
        except (OSError, ValueError):
            if time.monotonic() > end:
                return None
            time.sleep(0.05)


def pid_alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def with_descendants(pids: Iterable[int]) -> list[int]:
    """``pids`` and every process below them."""
    kids = _children()
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def kill_all(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM ``pids`` (and their trees), SIGKILL what is left after ``grace`` s; returns who was alive."""
    tree = [p for p in with_descendants(pids) if pid_alive(p)]
    for pid in tree:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in tree):
        time.sleep(0.1)
    for pid in tree:
        if pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return tree


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def environ_has(pid: int, entry: str) -> bool | None:
    """Whether ``pid``'s environment holds ``NAME=value`` exactly (None when unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return entry.encode() in raw.split(b"\0")


def ray_pids(env: str | None = None) -> set[int]:
    """Pids of Ray's own processes on this machine (GCS, raylet, dashboard, monitors, agents); with
    ``env`` (``NAME=value``), only those whose environment carries it: the processes one ``ray start``
    began inherit its environment, so a second cluster starting on the machine at the same moment is
    never taken for ours."""
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        args = cmdline(pid)
        ray = bool(args) and any("site-packages/ray/" in a for a in args[:3])
        if ray and (env is None or environ_has(pid, env) is not False):
            out.add(pid)
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON state file, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temp file + ``os.replace``), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp name unique per writer: two threads of one process (the controller's reconcile loop and a
    # request it serves) writing at once must not replace each other's half-written temp file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
