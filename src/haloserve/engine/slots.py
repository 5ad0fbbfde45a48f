"""Sequence slots and the pure scheduling decisions made on them.

A slot is one llama.cpp sequence id with the exact token list its KV cache holds. Choosing a slot for a
new request, and planning which tokens go into the next ``llama_decode`` call, are pure functions here
so they can be tested without a model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts share long prefixes and Python-level loops are slow.
    step = 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class Slot:
    """One sequence of the shared context: its id and the tokens its KV cache holds."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    job: Any = None
    used: int = -1  # when a request last held the slot (a tick count; -1: never)

    @property
    def free(self) -> bool:
        """True when no request is using the slot."""
        return self.job is None


def runs(seqs: Iterable[int]) -> int:
    """How many runs of consecutive ids ``seqs`` form ({0, 1, 3} is two runs)."""
    ids = sorted(set(seqs))
    return sum(1 for i, s in enumerate(ids) if i == 0 or s != ids[i - 1] + 1)


def choose_slot(
    free: Sequence[Slot],
    prompt: Sequence[int],
    min_similarity: float = 0.1,
    busy: Collection[int] = (),
    contiguous: bool = True,
) -> tuple[Slot, int]:
    """Pick a free slot for ``prompt`` and say how many of its cached tokens can be reused.

    As llama-server does, the slot whose cache shares the longest prefix with the prompt wins when that
    prefix is more than ``min_similarity`` of the prompt. Otherwise a cache must be overwritten, and the
    least valuable one is: an empty slot first, then the least recently used (llama-server's rule), so
    a node keeps as many conversations and system prompts cached as it has slots. With ``contiguous``
    (each sequence has its own KV stream), the choice is first limited to the slots that keep the
    ``busy`` sequence ids in the fewest runs of consecutive ids: llama.cpp decodes one micro-batch per
    run in that mode, so scattered ids would cost extra passes over the weights. At least one prompt
    token is always recomputed, because its logits are needed to sample the first output token.
    """
    if not free:
        raise ValueError("no free slot")
    best, best_lcp = None, 0
    for slot in free:
        lcp = common_prefix(slot.tokens, prompt)
        if lcp > best_lcp:
            best, best_lcp = slot, lcp
    if best is None or best_lcp <= min_similarity * len(prompt):
        taken = set(busy)

        def cost(s: Slot) -> tuple[int, int, int, int]:
            spread = runs(taken | {s.seq}) if contiguous else 0
            return (spread, 1 if s.tokens else 0, s.used, s.seq)

        best = min(free, key=cost)
        best_lcp = common_prefix(best.tokens, prompt)
    return best, min(best_lcp, max(0, len(prompt) - 1))


@dataclass(slots=True)
class Chunk:
    """Prompt tokens of one job scheduled into a step."""

    job: Any
    start: int
    count: int
    last: bool


def plan_prefill(
    waiting_prefill: Sequence[tuple[Any, int, int]],
    n_decoding: int,
    n_batch: int,
    n_ubatch: int,
) -> list[Chunk]:
    """Split pending prompt tokens into this step's chunks.

    ``waiting_prefill`` holds ``(job, tokens_done, prompt_len)`` in admission order. While other
    sequences are decoding, the step is kept to one micro-batch (``n_ubatch`` tokens including the
    decode tokens) so running streams never wait for more than one micro-batch of prompt processing;
    with nothing decoding, a step may use the whole logical batch (``n_batch``).
    """
    # Never starve prompts completely, even with more decoding sequences than a micro-batch holds.
    budget = max((n_ubatch if n_decoding else n_batch) - n_decoding, 16)
    budget = min(budget, n_batch - n_decoding)
    chunks: list[Chunk] = []
    for job, done, total in waiting_prefill:
        if budget <= 0:
            break
        count = min(total - done, budget)
        if count <= 0:
            continue
        chunks.append(Chunk(job, done, count, done + count == total))
        budget -= count
    return chunks
