"""Slot choice (prefix reuse, contiguous ids) and prefill planning are pure and exact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from haloserve.engine.slots import Slot, choose_slot, common_prefix, plan_prefill, runs


@given(st.lists(st.integers(0, 3), max_size=300), st.lists(st.integers(0, 3), max_size=300))
def test_common_prefix_matches_naive(a: list[int], b: list[int]) -> None:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix(a, b) == n


def test_best_prefix_wins_and_one_token_is_always_recomputed() -> None:
    prompt = list(range(100))
    slots = [Slot(0, [7, 7]), Slot(1, [*list(range(60)), 999]), Slot(2, list(range(100)))]
    slot, keep = choose_slot(slots, prompt)
    assert slot.seq == 2 and keep == 99
    slot, keep = choose_slot(slots[:2], prompt)
    assert slot.seq == 1 and keep == 60


def test_weak_similarity_overwrites_an_empty_slot_then_the_least_recently_used() -> None:
    prompt = list(range(100))
    slots = [Slot(3, [0, 1, 2], used=5), Slot(1, [5], used=9), Slot(2, [], used=7)]
    slot, keep = choose_slot(slots, prompt)
    assert slot.seq == 2 and keep == 0  # empty: nothing cached is lost
    slot, keep = choose_slot(slots[:2], prompt)
    assert slot.seq == 3 and keep == 3  # used longest ago (its 3 matching tokens are kept)
    slot, _ = choose_slot(slots[:2], prompt, contiguous=False, busy=[2])
    assert slot.seq == 3


def test_busy_ids_stay_in_as_few_runs_as_possible() -> None:
    prompt = [9] * 50
    free = [Slot(0, [1], used=1), Slot(1, [2], used=8), Slot(3, [3], used=9)]
    # busy {2}: 1 and 3 keep one run, 0 would make two; of 1 and 3, 1 was used longer ago
    slot, _ = choose_slot(free, prompt, busy=[2])
    assert slot.seq == 1
    # busy {0, 2}: only 1 joins them into one run, however recently it was used
    free = [Slot(1, [2], used=8), Slot(3, [3], used=1)]
    assert choose_slot(free, prompt, busy=[0, 2])[0].seq == 1
    # a shared KV buffer (kv_unified) has no such constraint: plain LRU
    assert choose_slot(free, prompt, busy=[0, 2], contiguous=False)[0].seq == 3
    # a real prefix match beats both rules
    free = [Slot(0, [1], used=1), Slot(3, [9] * 40, used=9)]
    assert choose_slot(free, prompt, busy=[1])[0].seq == 3


def test_runs() -> None:
    assert [runs(x) for x in ([], [4], [0, 1, 2], [0, 2], [3, 1, 0, 5])] == [0, 1, 1, 2, 3]


def test_prefill_uses_whole_batch_when_idle_and_one_ubatch_while_decoding() -> None:
    jobs = [("a", 0, 3000), ("b", 0, 100)]
    chunks = plan_prefill(jobs, n_decoding=0, n_batch=2048, n_ubatch=512)
    assert [(c.job, c.count, c.last) for c in chunks] == [("a", 2048, False)]
    chunks = plan_prefill(jobs, n_decoding=12, n_batch=2048, n_ubatch=512)
    assert [(c.job, c.count) for c in chunks] == [("a", 500)]
    chunks = plan_prefill([("a", 2900, 3000), ("b", 0, 100)], n_decoding=12, n_batch=2048, n_ubatch=512)
    assert [(c.job, c.start, c.count, c.last) for c in chunks] == [
        ("a", 2900, 100, True),
        ("b", 0, 100, True),
    ]


def test_prefill_never_starves_and_never_overflows_the_batch() -> None:
    chunks = plan_prefill([("a", 0, 100)], n_decoding=600, n_batch=2048, n_ubatch=512)
    assert chunks[0].count == 16
    chunks = plan_prefill([("a", 0, 100)], n_decoding=2040, n_batch=2048, n_ubatch=512)
    assert chunks[0].count == 8
