"""Why layers get queued: a request on the socket, a saved file, an upstream's
new value, a scheduled rebuild (``rebuild.every``) that is due, a publish the
registry refused that is due for another try. Each becomes one request in the
work queue, with its cause."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orchestrator.build.scope import upstreams_used
from orchestrator.build.state import AsyncStateStore
from orchestrator.catalog.layers import select
from orchestrator.core.plan import is_due
from orchestrator.service.events import EventBus
from orchestrator.service.ports import Loaded, Refused
from orchestrator.service.queue import WorkQueue
from orchestrator.service.runloop import RunLoop


class Triggers:
    def __init__(self, loaded: Loaded, queue: WorkQueue, state: AsyncStateStore,
                 runs: RunLoop, bus: EventBus, *, phase: Callable[[], str],
                 on_change: Callable[[], None]) -> None:
        self.loaded = loaded
        self.queue = queue
        self.state = state
        self.runs = runs
        self.bus = bus
        self.phase = phase
        self.on_change = on_change

    async def trigger(self, names: list[str], *, force: bool, cause: str) -> dict[str, Any]:
        """Queue layers (folder names or ids) as one request; coalesces with what waits."""
        if self.phase() == "stopping":
            raise Refused("the daemon is stopping", 503)
        ids = select(self.loaded.catalog, names)  # InputError for unknown names
        request_id = await self.queue.add(ids, force=force, cause=cause)
        self.runs.blocked = None  # new intent: a refused run is worth another try
        self.bus.publish("trigger_received", {"layers": ids, "force": force, "trigger": cause,
                                              "request_id": request_id})
        self.on_change()
        return {"id": request_id, "layers": ids, "requests": [request_id]}

    async def upstream_changed(self, upstream: str, cause: str) -> None:
        rooted = [lid for lid, layer in self.loaded.catalog.layers.items()
                  if upstream in upstreams_used(layer)]
        if rooted and self.phase() == "ready":
            await self.trigger(rooted, force=False, cause=cause)

    async def due(self) -> None:
        """Scheduled rebuilds that are due, and publishes due for another try."""
        now = time.time()
        queued = {e.layer for e in await self.queue.waiting()}
        busy = queued | set(self.runs.running_layers())
        failures = self.runs.failures
        retry = [lid for lid in failures.due_retries(now)
                 if lid in self.loaded.catalog.layers and lid not in busy]
        if retry:
            await self.trigger(retry, force=False, cause="retry after a failed publish")
        due = []
        layers = self.loaded.catalog.layers
        scheduled = [lid for lid, layer in layers.items()
                     if layer.rebuild_every_s is not None and lid not in busy
                     and lid not in retry]
        records = await self.state.records.all(scheduled) if scheduled else {}
        for lid in scheduled:
            record = records.get(lid)
            if record is None or not is_due(record.built_at, layers[lid].rebuild_every_s, now):
                continue
            # A scheduled rebuild that keeps failing backs off instead of
            # retrying every check: status shows when it tries next.
            if failures.waiting(lid, now):
                continue
            due.append(lid)
        if due:
            await self.trigger(due, force=False, cause="scheduled (rebuild.every)")
