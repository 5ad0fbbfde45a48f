"""A stand-in for ggml-rpc-server in `halo rpc-worker --binary` tests: it records how it was started, says
so on stdout, waits for a signal and exits with STANDIN_EXIT (so the supervisor's handling shows)."""

from __future__ import annotations

import json
import os
import signal
import sys
from types import FrameType


def main() -> None:
    """Record argv and LLAMA_CACHE to $STANDIN_RECORD, then wait for SIGTERM/SIGINT."""
    code = int(os.environ.get("STANDIN_EXIT", "0"))

    def stop(signum: int, _frame: FrameType | None) -> None:
        print(f"stand-in: got {signal.Signals(signum).name}, exiting {code}", flush=True)
        sys.exit(code)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    record = {"argv": sys.argv[1:], "llama_cache": os.environ.get("LLAMA_CACHE")}
    with open(os.environ["STANDIN_RECORD"], "w") as f:
        json.dump(record, f)
    print("stand-in: serving", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
