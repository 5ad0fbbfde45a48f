"""``python -m haloserve.cluster.supervise -- CMD ...``: keep CMD running (the head's gateway).

Restarts CMD when it exits, waiting 1 s, doubling up to 30 s while it keeps failing within a minute of
its start; SIGTERM/SIGINT stop CMD and the supervisor. It runs detached from Ray, so the gateway keeps
serving while Ray's head is down.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType


def supervise(cmd: list[str]) -> int:
    """Run ``cmd`` until signalled, restarting it with backoff; returns the exit status."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(cmd)
        code = child.wait()
        if stopping:
            break
        delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
        print(f"halo cluster: {cmd[0]} exited with {code}; restarting in {delay:.0f} s", flush=True)
        end = time.monotonic() + delay
        while not stopping and time.monotonic() < end:
            time.sleep(0.1)
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


def main(argv: list[str]) -> int:
    """Entry point: everything after ``--`` is the command."""
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m haloserve.cluster.supervise -- CMD [ARGS...]", file=sys.stderr)
        return 2
    return supervise(argv[argv.index("--") + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
