"""What ``status`` and ``GET /v1/layers`` show: read-only views of a running daemon.

They read the daemon's parts through :class:`Sources`, not the daemon object."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

from orchestrator.build.pipeline import Pipeline
from orchestrator.build.state import AsyncStateStore
from orchestrator.catalog.context import read_contexts
from orchestrator.service.connections import Connections
from orchestrator.service.durability import StateHealth
from orchestrator.service.packagewatch import PackageWatch
from orchestrator.service.ports import Loaded
from orchestrator.service.runloop import RunLoop
from orchestrator.service.upstreams import UpstreamWatch
from orchestrator.service.webhooks import Webhooks

LAYERS_VIEW_TTL_S = 5.0


class Sources(Protocol):
    """What the views read."""

    loaded: Loaded
    state: AsyncStateStore
    connections: Connections
    upstreams: UpstreamWatch
    runs: RunLoop
    health: StateHealth
    webhooks: Webhooks
    packages: PackageWatch
    started_at: float
    backend_error: str | None

    @property
    def phase(self) -> str: ...


class Views:
    def __init__(self, daemon: Sources) -> None:
        self.daemon = daemon
        # Bumped by anything that can change a plan; keys the layers-view cache.
        self.generation = 0
        self._layers_cache: tuple[int, float, list[dict[str, Any]]] | None = None

    def changed(self) -> None:
        self.generation += 1

    def running_layers(self) -> dict[str, str]:
        """layer -> build id of what is building now."""
        return self.daemon.runs.running_builds()

    async def status(self) -> dict[str, Any]:
        d = self.daemon
        running = []
        for layer, build_id in self.running_layers().items():
            row = await d.state.history.get(build_id) or {}
            running.append({"build_id": build_id, "layer": layer,
                            "started": row.get("started_at"), "builder": row.get("builder"),
                            "reason": row.get("reason")})
        pool = d.connections.pool
        pool_up = pool is not None and pool.any_up()
        return {
            "phase": d.phase,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - d.started_at, 1),
            "backend": {"name": ", ".join(m.name for m in pool.members) if pool else None,
                        "error": d.backend_error if not pool_up else None},
            "builders": pool.status() if pool else [],
            "queue": await d.state.work.entries(taken=False),
            "held": d.runs.queue.held(),
            "state": d.health.status(),
            "blocked": d.runs.blocked,
            "run": d.runs.current_run,
            "running": running,
            "upstreams": d.upstreams.status(),
            "retrying": d.runs.failures.status(),
            "webhooks": d.webhooks.status(),
            "packages": d.packages.status(),
            # A leak shows here first: it should not grow with reloads or time.
            "tasks": len(asyncio.all_tasks()),
        }

    async def layers(self) -> list[dict[str, Any]]:
        """Each layer with its key, digest, last outcome and whether (and why) it is stale.

        Planning asks the registry about every layer, so a `status --watch`
        polling each second reuses an answer younger than LAYERS_VIEW_TTL_S
        unless something happened since (a trigger, a run, a reload)."""
        cached = self._layers_cache
        if cached is not None and cached[0] == self.generation and \
                time.monotonic() - cached[1] < LAYERS_VIEW_TTL_S:
            return await self._with_live_state(cached[2])
        generation = self.generation
        view = await self._plan()
        self._layers_cache = (generation, time.monotonic(), view)
        return await self._with_live_state(view)

    async def _with_live_state(self, view: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Building/queued/failed change by the second: always fresh."""
        d = self.daemon
        running = self.running_layers()
        queued = {row["layer"] for row in await d.state.work.entries(taken=False)}
        last_builds = await d.state.history.last_of([entry["layer"] for entry in view])
        out = []
        for entry in view:
            lid = entry["layer"]
            last = last_builds.get(lid)
            out.append({**entry, "last_outcome": last["outcome"] if last else None,
                        **await self._layer_state(lid, entry["stale"], running, queued, last)})
        return out

    async def _plan(self) -> list[dict[str, Any]]:
        d = self.daemon
        catalog, config = d.loaded.catalog, d.loaded.config
        order = list(catalog.layers)
        contexts = await asyncio.to_thread(read_contexts, catalog.layers.values(),
                                           d.loaded.engines)
        registry = d.connections.registry
        planner = Pipeline(config, catalog, d.connections.engines, d.state,
                           registry if config.registry is not None else None,
                           d.upstreams.values, upstream_errors=d.upstreams.unresolved(),
                           contexts=contexts, dry_run=True, resolver=registry,
                           packages=d.packages.fixes())
        report = await planner.run(order)
        out = []
        for lid in order:
            layer, result = catalog.layers[lid], report.results[lid]
            record = await d.state.records.get(lid)
            value = result.value
            out.append({
                "layer": lid, "image": layer.image, "parent": layer.parent,
                "upstream": layer.upstream, "tags": list(layer.tags),
                "build_key": value.key if value else None,
                "digest": record.digest if record else None,
                "platforms": list(layer.platforms),
                "platform_digests": dict(record.platform_digests) if record else {},
                "stale": bool(value and value.decision.build) if value else None,
                "why": value.decision.describe() if value and value.decision.build
                else (str(result.error) if result.error else result.skipped_because),
            })
        return out

    async def _layer_state(self, lid: str, stale: bool | None, running: dict[str, str],
                           queued: set[str], last_build: dict[str, Any] | None
                           ) -> dict[str, Any]:
        """One word for a status view, most urgent first, and what goes with it."""
        d = self.daemon
        if lid in running:
            row = await d.state.history.get(running[lid]) or {}
            return {"state": "building", "build_id": running[lid],
                    "since": row.get("started_at"), "builder": row.get("builder")}
        if lid in queued:
            return {"state": "queued"}
        last = d.runs.last_results.get(lid)
        if last is None and last_build and last_build["outcome"] == "failed":
            last = {"outcome": "failed", "why": None, "build_id": last_build["id"]}
        if last and last["outcome"] == "failed":
            error = (last_build or {}).get("error") or last["why"] or ""
            retry = d.runs.failures.layers.get(lid)
            return {"state": "failed", "error": error.splitlines()[0] if error else "",
                    "build_id": last["build_id"] or (last_build or {}).get("id"),
                    "retry_at": retry.not_before if retry else None}
        if last and last["outcome"] == "skipped":
            return {"state": "skipped", "error": last["why"]}
        if stale:
            return {"state": "stale"}
        return {"state": "up_to_date"}
