"""A layer's build as named steps, each alone: the scheduler's critical-path
order, decide's job, run's request, publish's order, record's history and the
per-step clock. Engines and registries are fakes at their seams."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import orchestrator.build.runs as runs
from orchestrator.build.job import Base, BuildJob, Built
from orchestrator.build.naming import ImageNames
from orchestrator.build.publish import Publisher
from orchestrator.build.scheduler import PrioritySlots, critical_paths
from orchestrator.build.state import AsyncStateStore, StateStore
from orchestrator.catalog.context import Context
from orchestrator.core.errors import PublishFailed, RegistryError
from orchestrator.core.imageref import ImageRef
from orchestrator.core.model import (
    BuildConfig,
    BuilderSpec,
    Catalog,
    Config,
    Decision,
    Inputs,
    Layer,
    Outcome,
    Reason,
    RegistryConfig,
)
from orchestrator.engines.pool import Member
from tests.fakes import MemoryBuilder

KEY = "k" * 64
DIGEST = "sha256:" + "d" * 64


# -- the scheduler: ready layers take slots critical-path first ----------------------

def test_critical_paths_add_the_longest_chain_below() -> None:
    parents = {"os": None, "py": "os", "flask": "py", "app": "flask", "tools": "os"}
    order = ["os", "py", "tools", "flask", "app"]
    chain = critical_paths(order, parents, {"os": 10, "py": 100, "flask": 5, "app": 2,
                                            "tools": 50})
    assert chain == {"app": 2, "flask": 7, "py": 107, "tools": 50, "os": 117}
    # A layer never built counts as the median of the known ones, not as free.
    assert critical_paths(["a", "b"], {"a": None, "b": "a"}, {"a": 4}) == {"b": 4, "a": 8}


async def test_a_free_slot_goes_to_the_highest_priority_waiter() -> None:
    slots = PrioritySlots(1)
    served: list[str] = []

    async def build(name: str, priority: float) -> None:
        async with slots.take(priority):
            served.append(name)
            await asyncio.sleep(0)

    async with slots.take(0):  # the slot is busy while three layers become ready
        waiters = [asyncio.create_task(build("leaf", 1.0)),  # ready first
                   asyncio.create_task(build("chain", 9.0)),
                   asyncio.create_task(build("middle", 3.0))]
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert served == ["chain", "middle", "leaf"]


async def test_a_cancelled_waiter_never_holds_a_slot() -> None:
    slots = PrioritySlots(1)
    async with slots.take(0):
        gone = asyncio.create_task(slots.take(5).__aenter__())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
    async with asyncio.timeout(1):  # the slot came back: the next taker gets it
        async with slots.take(1):
            pass


async def test_a_free_slot_waits_for_a_higher_ranked_layer_still_deciding() -> None:
    """A parent's end makes a leaf and a chain's head ready; the leaf decides
    first. With one free slot the chain's head gets it; with two, both start."""
    async def build(slots: PrioritySlots, served: list[str], name: str, priority: float,
                    decide_s: float) -> None:
        slots.expect(name, priority)
        await asyncio.sleep(decide_s)
        async with slots.take(priority, name):
            served.append(name)
            await asyncio.sleep(0.05)

    for free, expected in ((1, ["chain", "leaf"]), (2, ["leaf", "chain"])):
        slots = PrioritySlots(free)
        served: list[str] = []
        async with asyncio.timeout(1):
            await asyncio.gather(build(slots, served, "leaf", 1.0, 0.0),
                                 build(slots, served, "chain", 9.0, 0.05))
        assert served == expected, free


async def test_a_layer_that_withdraws_or_never_arrives_does_not_stall_the_slot() -> None:
    slots = PrioritySlots(1, hold_s=0.2)
    slots.expect("up-to-date", 9.0)
    slots.expect("lost", 8.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    taker = asyncio.create_task(slots.take(1.0, "leaf").__aenter__())
    await asyncio.sleep(0.01)
    assert not taker.done()  # held for the higher-ranked layers deciding
    slots.withdraw("up-to-date")
    await asyncio.sleep(0.01)
    assert not taker.done()  # "lost" still outranks it
    async with asyncio.timeout(1):
        await taker  # "lost" never comes: the hold ends after hold_s
    assert 0.15 < loop.time() - started < 0.5


# -- publish: papers, then the key tag, then the human tags ------------------------

class RecordingRegistry:
    """The calls publish makes, in order; ``fail`` names a tag whose PUT fails."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def retag(self, ref: ImageRef, digest: str, tag: str) -> bool:
        if tag == self.fail:
            raise RegistryError(ref.registry, f"PUT {tag}: connection refused")
        self.calls.append(f"tag {tag}")
        return True


class RecordingAttestor:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def attest(self, repo: ImageRef, digest: str, facts: Any, tag: str | None,
                     work: Path, lineage: Any = None) -> list[str]:
        self.calls.append(f"attest {digest}")
        return ["sha256:" + "a" * 64]


def _config(tmp_path: Path, registry: bool = True) -> Config:
    return Config(tmp_path / "config.toml", tmp_path / "layers", tmp_path / "state",
                  tmp_path / "sock", BuildConfig(),
                  RegistryConfig("127.0.0.1:5000/t") if registry else None, None, {},
                  builders=(BuilderSpec("memory", "buildah"),))


def _job(tmp_path: Path) -> BuildJob:
    layer = Layer("app", "app", tmp_path, tmp_path / "Dockerfile", "app", "base", None,
                  tags=("1.0", "latest"))
    inputs = Inputs("f" * 64, (), (), "sha256:" + "0" * 64)
    parent = "sha256:" + "0" * 64
    job = BuildJob(layer, ImageNames(ImageRef("127.0.0.1:5000", "t/app"), ("1.0", "latest")),
                   Base(f"127.0.0.1:5000/t/base@{parent}", "base:1", parent), None, None,
                   Decision("app", True, Reason.NEVER_BUILT), Context("f" * 64, ()), inputs,
                   KEY)
    job.build_id = "b1"
    job.member = Member(BuilderSpec("memory", "buildah"), MemoryBuilder())
    return job


async def test_publish_puts_papers_then_the_key_tag_then_human_tags(tmp_path: Path) -> None:
    registry = RecordingRegistry()
    publisher = Publisher(_config(tmp_path), Catalog({}, {}), registry=registry,  # type: ignore[arg-type]
                          attestor=RecordingAttestor(registry.calls),  # type: ignore[arg-type]
                          upstreams={}, on_event=lambda event, fields: None)
    job = _job(tmp_path)
    built = Built(DIGEST, {"linux/amd64": DIGEST}, {"linux/amd64": "sha256:" + "0" * 64})
    await publisher.publish(job, built)
    assert registry.calls == [f"attest {DIGEST}", f"tag bk-{KEY}", "tag 1.0", "tag latest"]
    assert set(job.clock.steps) == {"attest", "tag"}


@pytest.mark.parametrize("fail", [f"bk-{KEY}", "1.0"])
async def test_a_registry_that_fails_mid_publish_leaves_no_human_tag_on_an_incomplete_build(
        tmp_path: Path, fail: str) -> None:
    """The registry dies between tag pushes: no human tag moves before the key
    tag, and the failure is a PublishFailed (tried again by the daemon)."""
    registry = RecordingRegistry(fail=fail)
    publisher = Publisher(_config(tmp_path), Catalog({}, {}), registry=registry,  # type: ignore[arg-type]
                          attestor=None, upstreams={}, on_event=lambda event, fields: None)
    built = Built(DIGEST, {"linux/amd64": DIGEST}, {"linux/amd64": "sha256:" + "0" * 64})
    with pytest.raises(PublishFailed, match="could not publish"):
        await publisher.publish(_job(tmp_path), built)
    if fail.startswith("bk-"):
        assert registry.calls == []  # neither the key nor any human tag
    else:
        assert registry.calls == [f"tag bk-{KEY}"]


# -- the whole sequence, timed ----------------------------------------------------

def _project(tmp_path: Path) -> Path:
    layers = tmp_path / "layers"
    for name, parent in (("base", None), ("app", "base")):
        folder = layers / name
        folder.mkdir(parents=True)
        origin = 'from = "upstream:seed"' if parent is None else f'from = "{parent}"'
        (folder / "layer.toml").write_text(f'{origin}\ntags = ["1"]\n')
        (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 1000\n")
    config = tmp_path / "config.toml"
    config.write_text('[state]\ndir = "state"\n[upstream.seed]\nimage = "example.org/seed"\n'
                      'tag = "1"\n')
    return config


def test_each_build_records_where_its_time_went(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes import fixed_upstreams

    builder = MemoryBuilder()
    monkeypatch.setattr(runs, "resolve_all",
                        fixed_upstreams({"seed": ("1", "sha256:" + "5" * 64)}))
    monkeypatch.setattr(runs, "make_builders",
                        lambda *a, **k: [(BuilderSpec("memory", "buildah"), builder)])
    config, catalog = runs.load(_project(tmp_path))
    events: list[tuple[str, dict[str, Any]]] = []
    report = asyncio.run(runs.execute(config, catalog, on_event=lambda e, f: events.append(
        (e, f))))
    assert report.by_outcome(Outcome.BUILT) == ["base", "app"]
    finished = [f for e, f in events if e == "build_finished"]
    for fields in finished:
        assert {"decide", "snapshot", "record", "run"} <= set(fields["steps"])
        assert all(seconds >= 0 for seconds in fields["steps"].values())
    store = StateStore(config.state_dir / "state.db")
    try:
        rows = store.history.builds()
        assert {row["layer"] for row in rows} == {"base", "app"}
        assert all({"decide", "run"} <= set(row["steps"]) for row in rows)
        # The scheduler's expected times come from this history.
        assert set(store.history.durations(["base", "app", "never"])) == {"base", "app"}
    finally:
        store.close()


async def test_a_state_that_refuses_the_start_fails_before_the_engine_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that cannot be recorded as running never starts its engine."""
    from tests.fakes import fixed_upstreams

    builder = MemoryBuilder()
    monkeypatch.setattr(runs, "resolve_all",
                        fixed_upstreams({"seed": ("1", "sha256:" + "5" * 64)}))
    monkeypatch.setattr(runs, "make_builders",
                        lambda *a, **k: [(BuilderSpec("memory", "buildah"), builder)])

    def full(self: StateStore, *args: Any, **kwargs: Any) -> float:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(StateStore, "start_keyed_build", full)
    config, catalog = runs.load(_project(tmp_path))
    report = await runs.execute(config, catalog)
    assert report.by_outcome(Outcome.FAILED) == ["base"]
    assert builder.built == []


async def test_history_durations_are_the_median_of_recent_builds(tmp_path: Path) -> None:
    state = AsyncStateStore(StateStore(tmp_path / "s.db"))
    try:
        db = state.store.db
        for n, took in enumerate([10.0, 1.0, 3.0, 500.0]):
            db.conn.execute("INSERT INTO builds (id, layer, reason, outcome, started_at, "
                            "finished_at) VALUES (?, 'x', 'new', ?, ?, ?)",
                            (f"b{n}", "built" if took < 100 else "failed", n * 1000.0,
                             n * 1000.0 + took))
        assert await state.history.durations(["x", "y"]) == {"x": 3.0}
    finally:
        await state.close()
