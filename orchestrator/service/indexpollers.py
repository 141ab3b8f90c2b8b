"""The package indexes the daemon polls for fixes: one poller per index that the
layers' images name (``build.packagefixes.watched``), each mostly one conditional
request. Their last states (validators, the snapshot in use) are kept in
``packages.db``, so a restart asks with the last validators and triggers nothing
new. A failing index is reported once, shown in status and retried with backoff;
it never holds up another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from orchestrator.build.packagefixes import Watched, on_loopback
from orchestrator.build.packagestore import PackageStore
from orchestrator.core.pkgindex import IndexSnapshot
from orchestrator.registry.indexwatch import IndexFailure, IndexPoller, IndexState, IndexWatch
from orchestrator.service.events import EventBus

log = structlog.get_logger("orchestrator.packages")
REMOTE_POLL_MIN_S = 60.0  # a mirror that is not on loopback: at most once a minute


class IndexPollers:
    def __init__(self, watch: IndexWatch, store: PackageStore, bus: EventBus, *,
                 on_index_change: Callable[[], None], on_change: Callable[[], None]) -> None:
        self.watch = watch
        self.store = store
        self.bus = bus
        self.on_index_change = on_index_change  # the fix decision is made again
        self.on_change = on_change  # what status shows changed
        self.watched: dict[str, Watched] = {}
        self.pollers: dict[str, IndexPoller] = {}
        self.errors: dict[str, str] = {}  # source -> why its last poll failed
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @classmethod
    async def open(cls, work: Path, store: PackageStore, bus: EventBus, *,
                   on_index_change: Callable[[], None],
                   on_change: Callable[[], None]) -> IndexPollers:
        """With the states kept by the last daemon (unreadable ones are polled afresh)."""
        states = await asyncio.to_thread(store.index_states)
        kept: dict[str, IndexState] = {}
        for source, text in states.items():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                kept[source] = IndexState.from_json(text)
        return cls(IndexWatch(work, states=kept), store, bus,
                   on_index_change=on_index_change, on_change=on_change)

    def snapshots(self) -> dict[str, IndexSnapshot]:
        """The snapshot in use of each watched index that has one."""
        return {sid: snap for sid in self.watched
                if (state := self.watch.states.get(sid)) is not None
                and (snap := state.snapshot()) is not None}

    def sync(self, watched: dict[str, Watched], poll_s: float,
             stop: asyncio.Event | None) -> None:
        """A poller per watched index; new ones are polled at once. ``stop``: when
        polling ends (None: pollers are kept for status, none runs: ``run --once``)."""
        self.watched = watched
        for sid in list(self.pollers):
            if sid not in watched:
                self.pollers.pop(sid, None)
                task = self._tasks.pop(sid, None)
                if task is not None:
                    task.cancel()
        for sid, item in watched.items():
            if sid in self.pollers:
                continue
            every = poll_s if on_loopback(item.source) else max(poll_s, REMOTE_POLL_MIN_S)
            poller = IndexPoller(self.watch, item.source, self._wanted(sid), every,
                                 self._changed, on_error=self._failed)
            self.pollers[sid] = poller
            if stop is not None:
                self._run(sid, poller.run(stop))

    def _run(self, sid: str, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks[sid] = task
        task.add_done_callback(lambda t: self._tasks.pop(sid, None)
                               if self._tasks.get(sid) is t else None)

    def _wanted(self, sid: str) -> Callable[[], tuple[list[str], list[str]]]:
        """What a poll asks of its index: read when it runs, so a refresh that
        changes the packages asked about needs no new poller."""
        def wanted() -> tuple[list[str], list[str]]:
            item = self.watched.get(sid)
            if item is None:
                return [], []
            return sorted(item.names), sorted(item.arches)

        return wanted

    async def stop(self) -> None:
        """Every poller stops (a reload makes them again from the new settings)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self.pollers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop()
        await self.save_states(list(self.watch.states))
        await self.watch.close()

    async def _changed(self, snapshot: IndexSnapshot) -> None:
        self.errors.pop(snapshot.source, None)
        await self.save_states([snapshot.source])
        self.bus.publish("package_index_changed", {
            "index": snapshot.source, "suite": snapshot.suite, "date": snapshot.date,
            "digest": snapshot.digest}, "info")
        self.on_index_change()

    def _failed(self, failure: IndexFailure, retry_in: float) -> None:
        poller = self.pollers.get(failure.source)
        first = poller is None or poller.backoff.failures <= 1
        self.errors[failure.source] = failure.message
        # One line when it starts failing; status shows the rest.
        if first:
            self.bus.publish("package_index_check_failed", {
                "index": failure.source, "error": failure.message,
                "retry_in_s": round(retry_in, 1)}, "warning")
        self.on_change()

    async def save_states(self, sources: list[str]) -> None:
        rows = [(sid, self.watch.states[sid].to_json()) for sid in sources
                if sid in self.watch.states]

        def save() -> None:
            for sid, text in rows:
                self.store.save_index_state(sid, text)

        try:
            await asyncio.to_thread(save)
        except Exception as exc:  # the next change saves it again; a restart polls again
            log.warning("package_index_state_not_kept", error=repr(exc))

    def status(self) -> list[dict[str, Any]]:
        return [{**poller.status(), "layers": sorted(self.watched[sid].layers)
                 if sid in self.watched else []}
                for sid, poller in sorted(self.pollers.items())]
