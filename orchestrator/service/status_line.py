"""The one line systemd shows for the daemon (``systemctl status``), and the
queue-depth metric, kept current by one task woken per change: a burst of
changes is one update."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from orchestrator.service.durability import StateHealth
from orchestrator.service.metrics import Metrics
from orchestrator.service.queue import WorkQueue
from orchestrator.service.sdnotify import Notifier


class StatusLine:
    def __init__(self, notifier: Notifier, metrics: Metrics, phase: Callable[[], str]) -> None:
        self.notifier = notifier
        self.metrics = metrics
        self.phase = phase
        self.queue: WorkQueue | None = None
        self.health: StateHealth | None = None
        self.running: Callable[[], list[str]] = list
        self._due = asyncio.Event()

    def changed(self) -> None:
        self._due.set()

    async def run(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            self.notifier.notify(await self.text())

    async def text(self) -> str:
        waiting = len(await self.queue.waiting()) if self.queue is not None else 0
        self.metrics.queue_depth.set(waiting)
        running = self.running()
        text = f"STATUS={self.phase()}: {len(running)} building"
        if running:
            text += f" ({', '.join(running[:3])}{'…' if len(running) > 3 else ''})"
        if self.health is not None and not self.health.writable:
            text += f"; the state refuses writes ({self.health.error}), intents held"
        return text + f", {waiting} queued"
