"""The builder pool: placement, health, waiting; and its configuration."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.catalog.config import load_config
from orchestrator.core.errors import BackendError, InputError
from orchestrator.core.model import BuilderSpec
from orchestrator.engines.base import BuildOutput, BuildRequest
from orchestrator.engines.pool import BuilderPool


class FakeEngine:
    def __init__(self, name: str, up: bool = True) -> None:
        self.name = name
        self.up = up
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if not self.up:
            raise BackendError(f"{self.name} is gone")

    async def build(self, request: BuildRequest) -> BuildOutput:
        return BuildOutput("sha256:x")

    async def local_digest(self, ref: str) -> str | None:
        return None

    def base_reference(self, repository: str, digest: str, key_tag_ref: str) -> str:
        return f"{repository}@{digest}"


def pool_of(*engines: FakeEngine, slots: int = 1) -> BuilderPool:
    events: list[tuple[str, dict[str, object]]] = []
    pool = BuilderPool([(BuilderSpec(e.name, "docker", f"unix:///{e.name}", slots), e)
                        for e in engines],
                       on_event=lambda event, fields, level: events.append((event, fields)))
    pool.events = events  # type: ignore[attr-defined]
    return pool


async def test_prefers_the_parents_engine_when_free() -> None:
    pool = pool_of(FakeEngine("a"), FakeEngine("b"))
    await pool.check_all()
    async with pool.lease(prefer="b") as member:
        assert member.name == "b"
        async with pool.lease(prefer="b") as other:  # b is full: the next free one
            assert other.name == "a"


async def test_least_loaded_without_a_preference() -> None:
    pool = pool_of(FakeEngine("a"), FakeEngine("b"), slots=2)
    await pool.check_all()
    async with pool.lease() as first, pool.lease() as second:
        assert {first.name, second.name} == {"a", "b"}


async def test_down_engine_is_skipped_and_reported() -> None:
    dead, alive = FakeEngine("dead", up=False), FakeEngine("alive")
    pool = pool_of(dead, alive)
    assert await pool.check_all()
    async with pool.lease(prefer="dead") as member:
        assert member.name == "alive"
    assert [m["state"] for m in pool.status()] == ["down", "up"]
    assert ("builder_down", {"builder": "dead", "error": "dead is gone", "retry_in_s": 2.0}) \
        in pool.events  # type: ignore[attr-defined]


async def test_builds_wait_while_no_engine_is_up_then_go() -> None:
    engine = FakeEngine("only", up=False)
    pool = pool_of(engine)
    assert not await pool.check_all()
    pool.members[0].next_check = 0  # re-ping at once rather than after the backoff

    async def lease_name() -> str:
        async with pool.lease() as member:
            return member.name

    waiting = asyncio.create_task(lease_name())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert any(e == "builds_waiting" for e, _ in pool.events)  # type: ignore[attr-defined]
    engine.up = True
    assert await asyncio.wait_for(waiting, 5) == "only"


def test_builders_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[registry]\nurl = "reg:5000/base"\n'
                      '[[builders]]\nname = "local"\nbackend = "buildah"\nslots = 2\n'
                      '[[builders]]\nbackend = "buildkit"\naddress = "tcp://bk:1234"\n')
    specs = load_config(config).builders
    assert specs == (BuilderSpec("local", "buildah", None, 2),
                     BuilderSpec("buildkit-2", "buildkit", "tcp://bk:1234", 1))


def test_single_backend_is_a_pool_of_one(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[build]\nbackend = "buildkit"\njobs = 3\n'
                      '[build.buildkit]\ndocker_host = "unix:///run/d.sock"\n')
    assert load_config(config).builders == (
        BuilderSpec("docker", "docker", "unix:///run/d.sock", 3),)


@pytest.mark.parametrize(("block", "message"), [
    ('[[builders]]\nbackend = "podman"\n', "unknown backend 'podman'"),
    ('[[builders]]\nbackend = "buildkit"\n', "a buildkitd needs an address"),
    ('[[builders]]\nbackend = "buildah"\naddress = "x"\n', "buildah builds on this host"),
    ('[[builders]]\nbackend = "buildah"\nslots = 0\n', "slots: must be at least 1"),
    ('[[builders]]\nname = "x"\nbackend = "buildah"\n[[builders]]\nname = "x"\n'
     'backend = "buildah"\n', "'x' is used twice"),
])
def test_bad_builders(tmp_path: Path, block: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[registry]\nurl = "reg:5000/base"\n' + block)
    with pytest.raises(InputError, match=message):
        load_config(config)


class SlowPingEngine(FakeEngine):
    """An engine whose health check takes a while: the window in which a second
    build could be placed on the slot the first one is about to take."""

    async def ping(self) -> None:
        await asyncio.sleep(0.05)
        await super().ping()


async def test_an_idle_re_ping_does_not_let_two_builds_share_one_slot() -> None:
    pool = pool_of(SlowPingEngine("a"), SlowPingEngine("b"))
    await pool.check_all()
    for member in pool.members:  # idle long enough to be pinged again before use
        member.last_ping = 0.0
    placed: list[str] = []
    release, both = asyncio.Event(), asyncio.Event()

    async def build() -> None:
        async with pool.lease() as member:
            placed.append(member.name)
            assert member.running <= member.spec.slots
            if len(placed) == 2:
                both.set()
            await release.wait()

    tasks = [asyncio.create_task(build()) for _ in range(2)]
    await asyncio.wait_for(both.wait(), 5)
    assert sorted(placed) == ["a", "b"]
    release.set()
    await asyncio.gather(*tasks)


async def test_a_one_shot_pool_fails_at_once_when_no_engine_answers() -> None:
    pool = BuilderPool([(BuilderSpec("gone", "docker", None, 1), FakeEngine("gone", up=False))],
                       wait_for_engines=False)
    with pytest.raises(BackendError, match="no builder answers: gone: gone is gone"):
        async with asyncio.timeout(5), pool.lease():
            pass
