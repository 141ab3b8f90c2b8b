"""A pool of build engines: slots, health, placement.

Each ready build takes a slot on an engine that answers, preferring the one
that built its parent (its layers are warm there). An engine that stops
answering is marked down and pinged again with backoff; while none is up,
builds wait and the pool says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.errors import BackendError
from orchestrator.core.model import BuilderSpec
from orchestrator.engines.base import Builder

RECHECK_BASE_S = 2.0
RECHECK_CAP_S = 60.0
# A builder idle for longer than this is pinged before it is given a build.
PING_AFTER_IDLE_S = 30.0


@dataclass
class Member:
    spec: BuilderSpec
    builder: Builder
    running: int = 0
    up: bool = False
    checked: bool = False
    last_error: str | None = None
    last_ping: float = 0.0
    failures: int = 0
    next_check: float = 0.0
    builds: int = field(default=0)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def free(self) -> bool:
        return self.up and self.running < self.spec.slots


class BuilderPool:
    def __init__(self, members: Iterable[tuple[BuilderSpec, Builder]],
                 on_event: Callable[[str, dict[str, Any], str], None] | None = None, *,
                 wait_for_engines: bool = True) -> None:
        self.members = [Member(spec, builder) for spec, builder in members]
        self.on_event = on_event or (lambda event, fields, level: None)
        # The daemon waits for an engine to come back; a one-shot run fails instead.
        self.wait_for_engines = wait_for_engines
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self.members)

    @property
    def capacity(self) -> int:
        return sum(m.spec.slots for m in self.members)

    def any_up(self) -> bool:
        return any(m.up for m in self.members)

    def why_waiting(self) -> str:
        return "; ".join(f"{m.name}: {m.last_error or 'not checked yet'}"
                         for m in self.members if not m.up)

    async def check(self, member: Member) -> bool:
        """Ping one engine and record what it said."""
        try:
            await member.builder.ping()
        except BackendError as exc:
            was_up = member.up or not member.checked
            member.up, member.checked = False, True
            member.last_error = str(exc)
            member.failures += 1
            delay = min(RECHECK_CAP_S, RECHECK_BASE_S * 2 ** (member.failures - 1))
            member.next_check = time.monotonic() + delay
            if was_up:
                self.on_event("builder_down", {"builder": member.name, "error": str(exc),
                                               "retry_in_s": delay}, "error")
            return False
        came_up = not member.up
        member.up, member.checked = True, True
        member.last_error, member.failures = None, 0
        member.last_ping = time.monotonic()
        if came_up:
            self.on_event("builder_up", {"builder": member.name}, "info")
            await self._notify()
        return True

    async def check_all(self) -> bool:
        await asyncio.gather(*(self.check(m) for m in self.members))
        return self.any_up()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _pick(self, prefer: str | None, exclude: set[str]) -> Member | None:
        candidates = [m for m in self.members if m.free and m.name not in exclude]
        if not candidates:
            return None
        for member in candidates:
            if member.name == prefer:
                return member
        # Least loaded relative to its size; ties go to the first configured.
        return min(candidates, key=lambda m: m.running / m.spec.slots)

    async def _recheck_down(self) -> None:
        now = time.monotonic()
        due = [m for m in self.members if not m.up and m.next_check <= now]
        if due:  # every build leases: nothing to gather is the usual case
            await asyncio.gather(*(self.check(m) for m in due))

    @contextlib.asynccontextmanager
    async def lease(self, prefer: str | None = None,
                    exclude: Iterable[str] = ()) -> AsyncIterator[Member]:
        """A slot on an engine that answers; waits (re-pinging downed ones) until one does.
        ``exclude`` names engines not to use (where this build just failed)."""
        excluded = set(exclude)
        if excluded >= {m.name for m in self.members}:
            excluded = set()  # nowhere else to go: any engine beats none
        announced = False
        while True:
            await self._recheck_down()
            member = self._pick(prefer, excluded)
            if member is not None:
                # Take the slot before any await: a ping of an idle engine yields
                # the loop, and another build must not pick the same slot meanwhile.
                member.running += 1
                stale = member.running == 1 and \
                    time.monotonic() - member.last_ping > PING_AFTER_IDLE_S
                if stale and not await self.check(member):
                    member.running -= 1
                    continue
                break
            if not self.wait_for_engines and not self.any_up() and \
                    all(m.checked for m in self.members):
                raise BackendError("no builder answers: " + self.why_waiting())
            if not self.any_up() and not announced:
                self.on_event("builds_waiting", {"reason": "no builder is up: "
                                                 + self.why_waiting()}, "warning")
                announced = True
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 1.0)
        member.builds += 1
        try:
            yield member
        finally:
            member.running -= 1
            await self._notify()

    def status(self) -> list[dict[str, Any]]:
        return [{"name": m.name, "backend": m.spec.backend, "address": m.spec.address,
                 "slots": m.spec.slots, "running": m.running,
                 "state": "up" if m.up else ("down" if m.checked else "unknown"),
                 "error": m.last_error, "builds": m.builds} for m in self.members]
