"""The eviction policy alone (server/model_policy.py): pure data in, the models to unload out."""

from __future__ import annotations

from haloserve.server.model_policy import Resident, plan_eviction


def test_room_enough_evicts_nothing() -> None:
    plan = plan_eviction([Resident("a", 40)], need=50, budget=100)
    assert plan.ok and plan.victims == ()


def test_least_recently_used_idle_model_goes_first() -> None:
    residents = [Resident("new", 40, last_used=3.0), Resident("old", 40, last_used=1.0)]
    assert plan_eviction(residents, need=40, budget=100).victims == ("old",)


def test_as_many_as_needed_in_lru_order() -> None:
    residents = [
        Resident("c", 30, last_used=3),
        Resident("a", 30, last_used=1),
        Resident("b", 30, last_used=2),
    ]
    assert plan_eviction(residents, need=60, budget=100).victims == ("a", "b")


def test_pinned_model_is_never_a_victim() -> None:
    residents = [Resident("pin", 40, pinned=True, last_used=0), Resident("b", 40, last_used=5)]
    assert plan_eviction(residents, need=50, budget=100).victims == ("b",)


def test_busy_models_are_waited_for_not_evicted() -> None:
    residents = [Resident("busy", 60, busy=True, last_used=0), Resident("idle", 20, last_used=9)]
    plan = plan_eviction(residents, need=50, budget=100)
    assert plan.wait and not plan.ok and plan.victims == ()


def test_larger_than_budget_with_pinned_models_is_impossible() -> None:
    plan = plan_eviction([Resident("pin", 60, pinned=True)], need=50, budget=100)
    assert plan.impossible and "pinned" in plan.impossible and not plan.ok
    assert "budget" in plan_eviction([], need=150, budget=100).impossible


def test_models_max_is_a_second_limit() -> None:
    residents = [Resident("a", 1, last_used=1), Resident("b", 1, last_used=2)]
    assert plan_eviction(residents, need=1, budget=100, max_models=2).victims == ("a",)
    assert plan_eviction(residents, need=1, budget=100, max_models=3).victims == ()
    pinned = [Resident("a", 1, pinned=True), Resident("b", 1, pinned=True)]
    assert "pinned" in plan_eviction(pinned, need=1, budget=100, max_models=2).impossible
