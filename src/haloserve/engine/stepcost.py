"""Where the engine thread's CPU time goes, by phase of a step (the thread's own CPU clock).

Always on: a handful of clock reads per step (none per token), so /metrics can show the CPU-side cost of
a step next to its decode. ``detail`` adds three reads per sampled token to split the per-token work
into logits (grammar masks, logprobs), sampling and output (detokenise, stop strings, events); it is for
benchmarks (benchmarks/step_cost.py), not for serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from dataclasses import dataclass, fields

clock = time.thread_time_ns  # CPU time of the calling thread: other threads and other processes do not count


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS (``top -H``, /proc/<pid>/task/<tid>/comm), Linux only.

    Python's thread names are its own; the engine thread's OS name is how tools (and gpu_bench.py)
    find its CPU time among the process's threads.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # no libc symbol: the name is only cosmetic
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME, at most 15 bytes


@dataclass(slots=True)
class StepCost:
    """Engine-thread CPU nanoseconds summed over steps, by phase."""

    steps: int = 0  # steps that ran a decode
    seq_steps: int = 0  # sequences that sampled a token, summed over steps
    schedule_ns: int = 0  # cancellations, admission (sampler set-up), building the batch
    decode_ns: int = 0  # llama_decode on this thread (on a CPU backend: its share of the compute)
    tokens_ns: int = 0  # everything per sampled token (the three below when ``detail``)
    logits_ns: int = 0  # detail: reading the row for grammar masks and logprobs
    sample_ns: int = 0  # detail: the sampler (or the token the graph sampled)
    output_ns: int = 0  # detail: detokenise, stop strings, grammar accept, output events
    handoff_ns: int = 0  # waking the event loops with the step's outputs
    detail: bool = False

    def per_seq_step_us(self) -> dict[str, float]:
        """Each phase in microseconds per sequence per step (0 before any step)."""
        n = max(1, self.seq_steps)
        return {f.name[:-3]: getattr(self, f.name) / n / 1000 for f in fields(self) if f.name.endswith("_ns")}

    def outside_decode_ns(self) -> int:
        """The CPU-side cost of the steps: everything but the decode itself."""
        return self.schedule_ns + self.tokens_ns + self.handoff_ns
