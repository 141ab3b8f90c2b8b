"""The graph runner: order, bounded overlap, failure isolation, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.build.scheduler import run_graph
from orchestrator.core.model import Outcome

PARENTS: dict[str, str | None] = {"os": None, "a": "os", "a1": "a", "a2": "a1", "b": "os",
                                  "b1": "b"}
ORDER = ["os", "a", "a1", "a2", "b", "b1"]


async def test_children_start_after_parents_and_all_succeed() -> None:
    seen: list[str] = []

    async def step(node: str, parent: str | None) -> str:
        assert parent == PARENTS[node]  # each step gets its parent's value
        seen.append(node)
        await asyncio.sleep(0)
        return node

    results = await run_graph(ORDER, PARENTS, step, lambda v: Outcome.BUILT)
    assert {n: r.outcome for n, r in results.items()} == dict.fromkeys(ORDER, Outcome.BUILT)
    for node, parent in PARENTS.items():
        if parent:
            assert seen.index(parent) < seen.index(node)


async def test_failure_skips_descendants_only() -> None:
    async def step(node: str, parent: str | None) -> str:
        if node == "a1":
            raise RuntimeError("boom")
        return node

    results = await run_graph(ORDER, PARENTS, step, lambda v: Outcome.BUILT)
    assert results["a1"].outcome is Outcome.FAILED
    assert str(results["a1"].error) == "boom"
    assert results["a2"].outcome is Outcome.SKIPPED
    assert results["a2"].skipped_because == "parent a1 failed"
    assert {results[n].outcome for n in ("os", "a", "b", "b1")} == {Outcome.BUILT}


async def test_child_starts_when_its_parent_ends_not_when_the_level_ends() -> None:
    events: list[str] = []
    slow_done = asyncio.Event()

    async def step(node: str, parent: str | None) -> str:
        if node == "a":
            await slow_done.wait()  # branch a is slow
        events.append(node)
        if node == "b1":
            slow_done.set()
        return node

    await run_graph(ORDER, PARENTS, step, lambda v: Outcome.BUILT)
    assert events.index("b1") < events.index("a")


async def test_semaphore_in_step_bounds_concurrency() -> None:
    slots = asyncio.Semaphore(2)
    running = peak = 0

    async def step(node: str, parent: str | None) -> str:
        nonlocal running, peak
        async with slots:
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
        return node

    flat = {f"n{i}": None for i in range(6)}
    await run_graph(list(flat), flat, step, lambda v: Outcome.BUILT)
    assert peak == 2


async def test_cancel_stops_running_steps() -> None:
    cleaned: list[str] = []
    started = asyncio.Event()

    async def step(node: str, parent: str | None) -> str:
        try:
            started.set()
            await asyncio.sleep(60)
        finally:
            cleaned.append(node)
        return node

    task = asyncio.create_task(run_graph(ORDER, PARENTS, step, lambda v: Outcome.BUILT))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "os" in cleaned
