"""Promises of the daemon and its build steps under a hostile environment (a full
disk at the wrong moment, receivers that misbehave), each checked at the part's
seam: the metrics that say what runs, the events webhooks are made from, and
the history that must not keep a finished build running."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.record import Recorder
from orchestrator.build.state import AsyncStateStore, StateStore
from orchestrator.core.errors import BuildFailed
from orchestrator.service.metrics import Metrics
from tests.unit.test_build_steps import _job
from tests.unit.test_daemon_parts import Full


def _running(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("orchestrator_builds_running") or 0.0


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
async def test_a_build_whose_end_the_full_disk_refuses_still_ends_for_metrics_and_hooks(
        tmp_path: Path, outcome: str) -> None:
    """A build fails (or is cancelled) while the disk is full: its
    ``build_finished`` still goes out (the running gauge comes back down, the
    failure is counted, webhooks hear of it), and its history row is written
    with the next transaction once there is room, never left 'running'."""
    store = StateStore(tmp_path / "s.db")
    state = AsyncStateStore(store, inline=True)
    metrics = Metrics()
    events: list[tuple[str, dict[str, Any]]] = []

    def on_event(event: str, fields: dict[str, Any]) -> None:
        events.append((event, fields))
        metrics.build_event(event, fields)

    recorder = Recorder(state, tmp_path / "logs", cause_of=lambda layer: (None, None),
                        on_event=on_event)
    job = _job(tmp_path)
    await recorder.started(job)
    assert _running(metrics) == 1
    full = Full(store)
    full.on = True
    if outcome == "failed":
        await recorder.failed(job, BuildFailed("app", None, "RUN make: exit 2", ""))
    else:
        await recorder.cancelled(job)
    assert [e for e, _ in events if e == "build_finished"] == ["build_finished"]
    assert _running(metrics) == 0
    assert metrics.registry.get_sample_value(
        "orchestrator_builds_total", {"layer": "app", "outcome": outcome}) == 1
    assert store.history.get("b1")["outcome"] == "running"  # type: ignore[index]
    full.on = False
    await state.probe()  # the next write that succeeds carries it
    assert store.history.get("b1")["outcome"] == outcome  # type: ignore[index]
    await state.close()


async def test_a_refused_end_of_build_is_no_other_error(tmp_path: Path) -> None:
    """Only the machine's faults are held: a real database error still raises."""
    store = StateStore(tmp_path / "s.db")
    state = AsyncStateStore(store, inline=True)
    recorder = Recorder(state, tmp_path / "logs", cause_of=lambda layer: (None, None),
                        on_event=lambda event, fields: None)
    job = _job(tmp_path)
    await recorder.started(job)
    store.db._conn.execute("DROP TABLE builds")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await recorder.failed(job, BuildFailed("app", None, "boom", ""))
    await state.close()
