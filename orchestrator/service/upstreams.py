"""The daemon's upstream watchers: one poller per upstream the catalog uses.

Each poller checks on its own schedule and never dies (any failure backs off
and is retried). A new value is stored and triggers the layers standing on
it, once. While an upstream cannot be reached, layers keep standing on its
last known value (stored across restarts), and status says since when; only
an upstream never seen at all fails the layers below it. The set of pollers
follows the catalog: an edited ``layer.toml`` that names a new upstream gets
its poller (and a first check) at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from orchestrator.build.state import AsyncStateStore
from orchestrator.core.errors import UpstreamError
from orchestrator.core.model import ResolvedUpstream, UpstreamSpec
from orchestrator.core.plan import short_digest
from orchestrator.registry.upstream import UpstreamPoller
from orchestrator.service.durability import StateHealth

Publish = Callable[[str, dict[str, Any], str], None]
# (upstream name, cause text, whether layers must rebuild) -> queue the layers on it
OnChange = Callable[[str, str], Awaitable[None]]


class UpstreamWatch:
    def __init__(self, state: AsyncStateStore,
                 resolver: Callable[[UpstreamSpec], Awaitable[ResolvedUpstream]],
                 publish: Publish, on_change: OnChange,
                 on_check: Callable[[str, str], None] | None = None,
                 health: StateHealth | None = None) -> None:
        self.state = state
        # A new value the state refuses to store (a full disk) is held there, and
        # stored and acted on once it can be.
        self.health = health or StateHealth(state, publish)
        self.resolver = resolver
        self.publish = publish
        self.on_change = on_change
        self.on_check = on_check or (lambda name, result: None)
        self.values: dict[str, ResolvedUpstream] = {}
        self.errors: dict[str, UpstreamError] = {}  # the last check of these failed
        self.unreachable_since: dict[str, float] = {}
        self.pollers: dict[str, UpstreamPoller] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self.live = False  # after startup: changes trigger builds

    def unresolved(self) -> dict[str, UpstreamError]:
        """Upstreams with no value at all (never seen): layers on them cannot build."""
        return {name: error for name, error in self.errors.items() if name not in self.values}

    async def sync(self, specs: Mapping[str, UpstreamSpec], needed: set[str],
                   *, start_polling: bool) -> None:
        """Poll exactly the ``needed`` upstreams: new ones (or changed settings) are
        checked now, and polled from then on when ``start_polling``."""
        for name in list(self.pollers):
            if name not in needed or self.pollers[name].spec != specs.get(name):
                await self._stop(name)
        fresh = []
        for name in sorted(needed - set(self.pollers)):
            if name not in specs:
                continue
            if name not in self.values and (known := await self.state.upstreams.get(name)):
                # A restart during an outage still knows where everything stood.
                self.values[name] = ResolvedUpstream(name, known["ref"], known["digest"],
                                                     known["tag"])
            self.pollers[name] = UpstreamPoller(specs[name], self.resolver, self._on_value,
                                                self._on_error)
            fresh.append(name)
        await asyncio.gather(*(self.pollers[name].check() for name in fresh))
        if start_polling:
            for name in self.pollers:
                self.start(name)

    def start(self, name: str) -> None:
        if name in self._tasks and not self._tasks[name].done():
            return
        stop = self._stops[name] = asyncio.Event()
        self._tasks[name] = asyncio.create_task(self.pollers[name].run(stop),
                                                name=f"poll-{name}")

    async def _stop(self, name: str) -> None:
        self.pollers.pop(name, None)
        stop, task = self._stops.pop(name, None), self._tasks.pop(name, None)
        if stop is not None:
            stop.set()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        for name in list(self.pollers):
            await self._stop(name)

    async def _on_value(self, value: ResolvedUpstream) -> None:
        self.on_check(value.name, "ok")
        await self.health.write(f"upstream {value.name}'s new value",
                                lambda: self._take_value(value))

    async def _take_value(self, value: ResolvedUpstream) -> None:
        was_missing = value.name not in self.values
        self.errors.pop(value.name, None)
        since = self.unreachable_since.pop(value.name, None)
        previous = await self.state.upstreams.get(value.name)
        changed = previous is not None and (previous["digest"], previous["tag"]) != (
            value.digest, value.tag)
        await self.state.upstreams.save(value.name, value.tag, value.digest, value.ref, changed)
        self.values[value.name] = value
        if since is not None:
            self.publish("upstream_recovered", {"upstream": value.name,
                                                "unreachable_s": round(time.time() - since)},
                         "info")
        if changed:
            assert previous is not None
            old = f"{previous['tag']}@{short_digest(previous['digest'])}"
            new = f"{value.tag}@{short_digest(value.digest)}"
            self.publish("upstream_changed", {"upstream": value.name, "old": old, "new": new},
                         "info")
            if self.live:
                await self.on_change(value.name, f"upstream {value.name} changed: "
                                     f"{old} -> {new}")
        elif was_missing and self.live:
            # Layers on it failed while it had no value at all: build them now.
            await self.on_change(value.name, f"upstream {value.name} reachable again")

    def _on_error(self, exc: UpstreamError, retry_in: float) -> None:
        self.on_check(exc.upstream, "error")
        self.errors[exc.upstream] = exc
        self.unreachable_since.setdefault(exc.upstream, time.time())
        known = self.values.get(exc.upstream)
        fields: dict[str, Any] = {"upstream": exc.upstream, "error": str(exc),
                                  "retry_in_s": round(retry_in, 1)}
        if known is not None:
            fields["using"] = f"last known {known.tag}@{short_digest(known.digest)}"
        self.publish("upstream_check_failed", fields, "warning")

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, poller in self.pollers.items():
            value = self.values.get(name)
            out[name] = {
                "tag": value.tag if value else None,
                "digest": value.digest if value else None,
                "last_check": poller.last_check, "next_check": poller.next_check,
                "error": poller.last_error,
                "unreachable_since": self.unreachable_since.get(name),
                "using_last_known": name in self.errors and value is not None,
            }
        return out
