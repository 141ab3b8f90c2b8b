"""The work queue as a unit: coalescing, the strongest intent, answerable requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.build.results import RunReport
from orchestrator.build.scheduler import NodeResult
from orchestrator.build.state import AsyncStateStore, StateStore
from orchestrator.core.model import Outcome
from orchestrator.service.queue import WorkQueue


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[WorkQueue]:
    state = AsyncStateStore(StateStore(tmp_path / "s.db"))
    yield WorkQueue(state)
    await state.close()


def outcome(layer: str, value: str) -> dict[str, dict[str, str]]:
    return {layer: {"outcome": value}}


async def test_a_forced_trigger_then_a_plain_one_stays_forced(queue: WorkQueue) -> None:
    forced = await queue.add(["x"], force=True, cause="force it")
    taken = await queue.take()
    assert [(e.layer, e.force) for e in taken] == [("x", True)]
    # 10 ms later, while the run holds x and has not started its build:
    plain = await queue.add(["x"], force=False, cause="file changed")
    assert queue.superseded(["x"]) and not queue.superseded(["y"])
    done = await queue.finish(taken, outcome("x", "deferred"), {"x"}, lambda layer: [layer])
    assert done == []
    [entry] = await queue.waiting()
    assert entry.force, "the follow-up must keep the forced intent"
    assert set(entry.requests) == {forced, plain}
    # Both requests stay answerable, and both end when the follow-up is done.
    assert (await queue.request(forced))["state"] == "queued"  # type: ignore[index]
    again = await queue.take()
    done = await queue.finish(again, outcome("x", "built"), set(), lambda layer: [layer])
    assert set(done) == {forced, plain}
    for request in (forced, plain):
        answer = await queue.request(request)
        assert answer is not None and answer["state"] == "done"
        assert answer["results"]["x"]["outcome"] == "built"


async def test_every_request_id_answers_even_when_merged(queue: WorkQueue) -> None:
    first = await queue.add(["a", "b"], force=False, cause="one")
    second = await queue.add(["a"], force=False, cause="two")  # merges into a's entry
    assert first != second
    answer = await queue.request(second)
    assert answer is not None and answer["state"] == "queued" and answer["layers"] == ["a"]
    taken = await queue.take()
    assert (await queue.request(second))["state"] == "running"  # type: ignore[index]
    await queue.finish(taken, {"a": {"outcome": "reused"}, "b": {"outcome": "built"},
                               "c": {"outcome": "built"}}, set(),
                       lambda layer: {"a": ["a", "c"], "b": ["b"]}[layer])
    answer = await queue.request(first)
    assert answer is not None and answer["state"] == "done"
    assert {k: v["outcome"] for k, v in answer["results"].items()} == {
        "a": "reused", "b": "built", "c": "built"}
    assert await queue.request("r-unknown") is None


async def test_a_refused_run_gives_its_work_back(queue: WorkQueue) -> None:
    request = await queue.add(["a"], force=True, cause="upstream changed")
    taken = await queue.take()
    await queue.give_back(taken)
    [entry] = await queue.waiting()
    assert entry.layer == "a" and entry.force and entry.requests == (request,)
    assert (await queue.request(request))["state"] == "queued"  # type: ignore[index]


async def test_taken_work_survives_a_crash(tmp_path: Path) -> None:
    state = AsyncStateStore(StateStore(tmp_path / "s.db"))
    queue = WorkQueue(state)
    request = await queue.add(["a"], force=True, cause="x")
    await queue.take()
    await state.close()  # as after kill -9: nothing else was written
    again = AsyncStateStore(StateStore(tmp_path / "s.db"))
    assert await again.work.requeue_taken() == 1
    [entry] = await WorkQueue(again).waiting()
    assert entry.force and entry.requests == (request,)
    await again.close()


def test_deferred_covers_what_was_skipped_below_a_superseded_layer() -> None:
    report = RunReport({
        "os": NodeResult(Outcome.SUPERSEDED),
        "app": NodeResult(Outcome.SKIPPED, skipped_because="parent os superseded",
                          blocked_by="os"),
        "other": NodeResult(Outcome.FAILED, error=RuntimeError("boom")),
        "below": NodeResult(Outcome.SKIPPED, skipped_because="parent other failed",
                            blocked_by="other"),
    })
    assert report.deferred() == {"os", "app"}
    assert not report.ok  # "other" really failed
    only_deferred = RunReport({k: v for k, v in report.results.items() if k in ("os", "app")})
    assert only_deferred.ok  # superseded work is not a failure
