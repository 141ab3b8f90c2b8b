"""Running a graph of steps: parents first, bounded, branches in parallel.

Generic over the step so it is tested without a builder. A node starts the
moment its parent's step succeeds; when a step fails, everything below it is
skipped while independent branches go on. Cancelling :func:`run_graph`
cancels every running step and waits for each to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from orchestrator.core.model import Outcome

V = TypeVar("V")


@dataclass(frozen=True)
class NodeResult(Generic[V]):
    outcome: Outcome  # BUILT/REUSED come from the step's value; FAILED, SKIPPED, CANCELLED here
    value: V | None = None
    error: BaseException | None = None
    skipped_because: str | None = None
    blocked_by: str | None = None  # for SKIPPED: the parent whose outcome stopped it


Step = Callable[[str, V | None], Awaitable[V]]


STOPPED = (Outcome.FAILED, Outcome.SKIPPED, Outcome.CANCELLED, Outcome.SUPERSEDED)


async def run_graph(
    order: Sequence[str],
    parents: Mapping[str, str | None],
    step: Step[V],
    outcome_of: Callable[[V], Outcome],
    cancelled: set[str] | None = None,
) -> dict[str, NodeResult[V]]:
    """Run ``step(node, parent_value)`` for every node of ``order`` (parents first).

    A parent outside ``order`` counts as done with no value. Concurrency is the
    step's business (it holds a semaphore around the expensive part), so cheap
    work such as lookups never waits behind builds. A node named in
    ``cancelled`` whose task is then cancelled ends as CANCELLED alone (its
    descendants are skipped) instead of cancelling the whole run.
    """
    node_cancels = cancelled if cancelled is not None else set()
    results: dict[str, NodeResult[V]] = {}
    done = {node: asyncio.Event() for node in order}

    async def run_node(node: str) -> None:
        try:
            parent = parents.get(node)
            parent_value: V | None = None
            if parent is not None and parent in done:
                await done[parent].wait()
                parent_result = results[parent]
                if parent_result.outcome in STOPPED:
                    results[node] = NodeResult(
                        Outcome.SKIPPED, skipped_because=f"parent {parent} "
                        f"{parent_result.outcome.value}", blocked_by=parent)
                    return
                parent_value = parent_result.value
            try:
                value = await step(node, parent_value)
            except asyncio.CancelledError:
                results[node] = NodeResult(Outcome.CANCELLED)
                task = asyncio.current_task()
                if node in node_cancels and task is not None and task.uncancel() == 0:
                    return  # only this node was cancelled; the run goes on
                raise
            except Exception as exc:  # a step's failure is this node's outcome
                results[node] = NodeResult(Outcome.FAILED, error=exc)
                return
            results[node] = NodeResult(outcome_of(value), value)
        finally:
            done[node].set()

    tasks = [asyncio.create_task(run_node(node), name=f"layer:{node}") for node in order]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        # Wait for every step to stop its builder; their errors are already recorded.
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in order:
            results.setdefault(node, NodeResult(Outcome.CANCELLED))
        raise
    return results


def critical_paths(order: Sequence[str], parents: Mapping[str, str | None],
                   expected: Mapping[str, float]) -> dict[str, float]:
    """Each node's longest chain of expected times from it down to a leaf (its own
    included). A node never built counts as the median of the known times (1 s
    when none is known): unknown is not free."""
    known = sorted(expected.values())
    default = known[len(known) // 2] if known else 1.0
    children: dict[str, list[str]] = {node: [] for node in order}
    for node in order:
        parent = parents.get(node)
        if parent in children:
            children[parent].append(node)
    chain: dict[str, float] = {}
    for node in reversed(order):  # parents come first in ``order``: children are done
        below = max((chain[child] for child in children[node]), default=0.0)
        chain[node] = expected.get(node, default) + below
    return chain


class PrioritySlots:
    """A semaphore whose waiters are served highest priority first (ties: first
    come), not first come first served: a ready layer that heads a long chain
    takes the next free slot before a leaf that has waited longer.

    Layers made ready by one parent's end arrive one by one, each after its own
    decide step; while slots are free, the first to arrive would take them. So a
    layer announces itself (:meth:`expect`) before it decides, and a free slot is
    not given to a waiter while a layer still deciding outranks it, unless more
    slots are free than such layers, and never for longer than ``hold_s`` (a
    layer that neither arrives nor withdraws cannot stall the run)."""

    def __init__(self, slots: int, *, hold_s: float = 0.5) -> None:
        self._free = slots
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._deciding: dict[str, float] = {}  # layer -> priority, not arrived yet
        self._hold_s = hold_s
        self._held_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def expect(self, name: str, priority: float) -> None:
        """``name`` is deciding and may ask for a slot soon."""
        self._deciding[name] = priority

    def withdraw(self, name: str) -> None:
        """``name`` will not ask (it needs no build, or failed before)."""
        if self._deciding.pop(name, None) is not None:
            self._hand_out()

    @contextlib.asynccontextmanager
    async def take(self, priority: float, name: str | None = None) -> AsyncIterator[None]:
        await self._acquire(priority, name)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: float, name: str | None) -> None:
        if name is not None:
            self._deciding.pop(name, None)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._arrivals), waiter))
        self._hand_out()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        self._free += 1
        self._hand_out()

    def _hand_out(self) -> None:
        """Free slots to the best waiters, keeping one for each deciding layer
        that outranks them (for at most ``hold_s``)."""
        loop = asyncio.get_running_loop()
        while self._free > 0 and self._waiting:
            negative, _, waiter = self._waiting[0]
            if waiter.done():  # a cancelled waiter is skipped
                heapq.heappop(self._waiting)
                continue
            above = sum(1 for p in self._deciding.values() if p > -negative)
            if above >= self._free:
                now = loop.time()
                if self._held_since is None:
                    self._held_since = now
                if now - self._held_since < self._hold_s - 1e-3:  # timers may fire early
                    if self._timer is None:
                        self._timer = loop.call_at(self._held_since + self._hold_s,
                                                   self._on_timer)
                    return
            heapq.heappop(self._waiting)
            self._free -= 1
            waiter.set_result(None)
        self._held_since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._hand_out()
