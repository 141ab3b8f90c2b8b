"""The daemon's parts alone: intents held while the state refuses writes, the
backoff of failing layers, metrics counted per build, triggers that come due."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.state import AsyncStateStore, StateStore
from orchestrator.service.durability import StateHealth
from orchestrator.service.failures import Failures
from orchestrator.service.metrics import Metrics
from orchestrator.service.queue import WorkQueue


class Full:
    """Makes the store's connection refuse writes, as a full disk does."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.on = False
        real = store.db._conn

        class Conn:
            def execute(_self, sql: str, *args: Any) -> sqlite3.Cursor:
                if self.on and sql.lstrip().upper().startswith(
                        ("INSERT", "UPDATE", "DELETE", "BEGIN")):
                    raise sqlite3.OperationalError("database or disk is full")
                return real.execute(sql, *args)

            def __getattr__(_self, name: str) -> Any:
                return getattr(real, name)

        store.db._conn = Conn()  # type: ignore[assignment]


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[AsyncStateStore, StateHealth, Full,
                                                        list[tuple[str, dict[str, Any]]]]]:
    store = StateStore(tmp_path / "s.db")
    state = AsyncStateStore(store, inline=True)
    events: list[tuple[str, dict[str, Any]]] = []
    health = StateHealth(state, lambda event, fields, level: events.append((event, fields)))
    yield state, health, Full(store), events
    await state.close()


async def test_a_trigger_on_a_full_disk_is_held_and_written_when_space_returns(
        parts: tuple[AsyncStateStore, StateHealth, Full, list[tuple[str, dict[str, Any]]]],
) -> None:
    state, health, full, events = parts
    queue = WorkQueue(state, health)
    full.on = True
    request = await queue.add(["a", "b"], force=True, cause="file changed: a/x")
    assert not health.writable and [e for e, _ in events] == ["state_unwritable"]
    answer = await queue.request(request)  # answerable while held
    assert answer is not None and answer["state"] == "held" and "full" in answer["why"]
    assert await queue.take() == []  # nothing starts that could not be recorded
    second = await queue.add(["a"], force=False, cause="file changed: a/y")
    assert [e for e, _ in events] == ["state_unwritable"]  # one line, not a flood
    assert not await health.try_again()  # still full
    full.on = False
    assert await health.try_again() and health.writable and health.recovered.is_set()
    assert [e for e, _ in events][-1] == "state_writable"
    waiting = {e.layer: e for e in await queue.waiting()}
    assert set(waiting) == {"a", "b"} and waiting["a"].force
    assert set(waiting["a"].requests) == {request, second}  # both intents, merged, in order
    assert (await queue.request(request))["state"] == "queued"  # type: ignore[index]


async def test_the_end_of_a_run_on_a_full_disk_is_written_later(
        parts: tuple[AsyncStateStore, StateHealth, Full, list[tuple[str, dict[str, Any]]]],
) -> None:
    state, health, full, _ = parts
    queue = WorkQueue(state, health)
    request = await queue.add(["a"], force=False, cause="x")
    taken = await queue.take()
    full.on = True
    assert await queue.finish(taken, {"a": {"outcome": "built"}}, set(),
                              lambda layer: [layer]) == []
    full.on = False
    assert await health.try_again()
    answer = await queue.request(request)
    assert answer is not None and answer["state"] == "done"
    assert answer["results"] == {"a": {"outcome": "built"}}


def test_a_failed_publish_is_retried_by_itself_with_backoff() -> None:
    failures = Failures()
    first = failures.failed("app", retry=True)
    second = failures.failed("app", retry=True)
    assert second.failures == 2 and second.not_before - time.time() > \
        first.not_before - time.time() - 1
    assert failures.due_retries(time.time()) == []
    assert failures.due_retries(second.not_before + 1) == ["app"]
    failures.failed("broken", retry=False)  # a build failure waits for a change
    assert failures.due_retries(time.time() + 10_000) == ["app"]
    assert failures.waiting("broken", time.time())
    failures.succeeded("app")
    assert failures.next_retry() is None


def test_builds_are_counted_when_they_finish_not_when_the_run_ends() -> None:
    metrics = Metrics()
    metrics.build_event("build_started", {"layer": "python:3.13"})
    metrics.build_event("build_finished", {"layer": "python:3.13", "outcome": "built",
                                           "duration_s": 171.0})
    text = metrics.render().decode()
    assert 'orchestrator_builds_total{layer="python:3.13",outcome="built"} 1.0' in text
    assert 'orchestrator_last_success_timestamp_seconds{layer="python:3.13"}' in text
    # At the run's end only what no build event counted is added.
    metrics.run_outcome("python:3.13", "built")
    metrics.run_outcome("app", "skipped")
    text = metrics.render().decode()
    assert 'orchestrator_builds_total{layer="python:3.13",outcome="built"} 1.0' in text
    assert 'orchestrator_builds_total{layer="app",outcome="skipped"} 1.0' in text
