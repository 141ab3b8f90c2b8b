"""The daemon's run loop: take what the queue holds, run it over the hierarchy,
close the requests it served, and say what happened.

One run at a time. A run that cannot start (bad input) gives its work back
untouched; work the state cannot record (a full disk) waits in the queue until
it can. While draining for a stop no new build starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from orchestrator.build.packagefixes import FixView
from orchestrator.build.pipeline import Pipeline
from orchestrator.build.results import LayerResult, RunReport
from orchestrator.build.runs import apply_retention, catalog_revision, enforce_policy
from orchestrator.build.scheduler import NodeResult
from orchestrator.build.scope import targets
from orchestrator.build.state import AsyncStateStore, is_unwritable
from orchestrator.catalog.context import read_contexts
from orchestrator.core import graph
from orchestrator.core.errors import InputError, PublishFailed, RegistryError, StateWriteError
from orchestrator.core.imageref import parse_repository
from orchestrator.core.model import Outcome
from orchestrator.service.connections import Connections
from orchestrator.service.durability import StateHealth, first_of
from orchestrator.service.events import EventBus
from orchestrator.service.failures import Failures
from orchestrator.service.metrics import Metrics
from orchestrator.service.ports import Loaded
from orchestrator.service.queue import Entry, WorkQueue
from orchestrator.service.upstreams import UpstreamWatch


class RunLoop:
    def __init__(self, loaded: Loaded, state: AsyncStateStore, queue: WorkQueue,
                 connections: Connections, upstreams: UpstreamWatch, bus: EventBus,
                 metrics: Metrics, health: StateHealth, stop: asyncio.Event, *,
                 once: bool, on_change: Callable[[], None]) -> None:
        self.loaded = loaded
        self.state = state
        self.queue = queue
        self.connections = connections
        self.upstreams = upstreams
        self.bus = bus
        self.metrics = metrics
        self.health = health
        self.stop = stop  # set: drain (no new builds), then end
        self.once = once  # burst mode: end when the queue is empty
        self.on_change = on_change  # the queue or the running builds changed
        self.current: Pipeline | None = None
        self.current_run: dict[str, Any] | None = None
        self.blocked: str | None = None  # why queued work waits (a refused run)
        # Each layer's outcome in the last run that covered it (skips included,
        # which never reach the build history).
        self.last_results: dict[str, dict[str, Any]] = {}
        self.failures = Failures()
        self.exit_code = 0
        # The package fixes each layer has (service/packagewatch.py): the decide step
        # pins them in the key. Set by the daemon's wiring.
        self.package_fixes: Callable[[], FixView | None] = lambda: None

    def running_layers(self) -> list[str]:
        return [layer for layer, _ in self.current.running.values()] if self.current else []

    def running_builds(self) -> dict[str, str]:
        """layer -> build id of what is building now."""
        current = self.current
        return {layer: build_id for build_id, (layer, _) in
                (current.running.items() if current else [])}

    def cancel(self, build_id: str) -> bool:
        """True when the build was running and is being stopped."""
        if self.current is not None and self.current.cancel(build_id):
            self.bus.publish("build_cancel_requested", {"build_id": build_id})
            return True
        return False

    async def run(self) -> None:
        while not self.stop.is_set():
            self.queue.wakeup.clear()
            if not self.health.writable:
                # Nothing starts that could not be recorded; held work waits.
                await first_of(self.stop, self.health.recovered)
                continue
            waiting = await self.queue.waiting()
            if waiting and self.blocked is None:
                # Visible as a run from before the queue is taken: a status read in
                # between must not see "nothing queued, nothing running".
                run_id = f"run-{time.monotonic_ns() % 10**10:010d}"
                self.current_run = {"id": run_id, "started": time.time(), "layers": [],
                                    "requests": []}
                try:
                    entries = await self.queue.take()
                    if entries:
                        await self._execute(entries, run_id)
                finally:
                    self.current_run = None
                continue
            if self.once and (not waiting or self.blocked is not None) and \
                    not self.queue.held():
                self.stop.set()
                return
            await self.queue.wakeup.wait()

    async def _execute(self, entries: list[Entry], run_id: str) -> None:
        catalog, config = self.loaded.catalog, self.loaded.config
        unknown = [e for e in entries if e.layer not in catalog.layers]
        if unknown:  # a layer renamed away since it was queued: its requests end here
            await self.queue.finish(unknown, {e.layer: {"outcome": "unknown layer"}
                                              for e in unknown}, set(), lambda layer: [layer])
        entries = [e for e in entries if e.layer in catalog.layers]
        if not entries:
            return
        order = targets(catalog, [e.layer for e in entries])
        forced = frozenset(e.layer for e in entries if e.force)
        self.current_run = {"id": run_id, "started": time.time(), "layers": order,
                            "requests": sorted({r for e in entries for r in e.requests})}
        self.on_change()

        def superseded(lineage: list[str]) -> bool:
            # Draining: no new builds start. Otherwise: a newer change is queued.
            return self.stop.is_set() or self.queue.superseded(lineage)

        try:
            await asyncio.to_thread(enforce_policy, catalog, lambda line: self.bus.publish(
                "policy_warning", {"finding": line}, "warning"))
            contexts = await asyncio.to_thread(
                read_contexts, [catalog.layers[lid] for lid in order], self.loaded.engines)
        except InputError as exc:
            # Nothing is lost: the work waits, untouched, until the input is fixed
            # (any new trigger or file change tries again).
            await self.queue.give_back(entries)
            self.blocked = str(exc)
            self.current_run = None
            self.bus.publish("run_refused", {"error": str(exc),
                                             "waiting": [e.layer for e in entries]}, "error")
            self.on_change()
            return
        connections = self.connections
        self.current = Pipeline(
            config, catalog, connections.engines, self.state,
            connections.registry if config.registry is not None else None,
            self.upstreams.values, upstream_errors=self.upstreams.unresolved(),
            contexts=contexts, revision=lambda: catalog_revision(config.layers_dir),
            forced=forced, on_event=self._on_pipeline_event,
            cause_of=causes(entries, {lid: layer.parent for lid, layer in catalog.layers.items()}),
            superseded=superseded, resolver=connections.registry,
            attestor=connections.attestor, packages=self.package_fixes(),
        )
        self.bus.publish("run_started", {"run_id": run_id, "layers": len(order)})
        started = time.time()
        try:
            report = await self.current.run(order)
        finally:
            self.current = None
        await self._after_run(report, entries, order, run_id, started)

    async def _after_run(self, report: RunReport, entries: list[Entry], order: list[str],
                         run_id: str, started: float) -> None:
        deferred = report.deferred()
        if self.stop.is_set():  # stopped by the shutdown: not failures, wait for next start
            deferred |= {lid for lid, r in report.results.items()
                         if r.outcome is Outcome.CANCELLED or
                         report.root_cause(lid) in report.by_outcome(Outcome.CANCELLED)}
        # A build the state could not record (a full disk) is not a failure of
        # the layer: it waits, with its requests, until the state takes writes.
        unrecorded = {lid for lid, r in report.results.items()
                      if r.outcome is Outcome.FAILED and r.error is not None and
                      (isinstance(r.error, StateWriteError) or is_unwritable(r.error))}
        for lid in unrecorded:
            error = report.results[lid].error
            assert error is not None
            self.health.failed(f"recording the build of {lid}", error)
        deferred |= {lid for lid in report.results
                     if report.root_cause(lid) in unrecorded}
        registry_down = await self._registry_down(report)
        catalog = self.loaded.catalog
        parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
        in_run = set(order)
        outcomes: dict[str, dict[str, Any]] = {}
        for lid, result in report.results.items():
            outcome = "deferred" if lid in deferred else result.outcome.value
            outcomes[lid] = {"outcome": outcome,
                             "build_id": result.value.build_id if result.value else None}
            self.metrics.run_outcome(lid, result.outcome.value)
            if lid not in deferred:
                self._note_failure(lid, result, registry_down)
            self.last_results[lid] = {
                "outcome": result.outcome.value, "at": time.time(),
                "why": result.skipped_because or (str(result.error) if result.error else None),
                "build_id": result.value.build_id if result.value else None,
            }
        done = await self.queue.finish(
            entries, outcomes, deferred,
            lambda layer: graph.descendants(parents, [layer]) & in_run)
        counts: dict[str, int] = {}
        for entry in outcomes.values():
            counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        outcome = "ok" if report.ok else "failed"
        if report.ok and deferred:
            outcome = "deferred"
        if not report.ok and self.once:
            self.exit_code = 1
        self.bus.publish("run_finished", {"run_id": run_id, "outcome": outcome,
                                          "counts": counts, "requests_done": done,
                                          "duration_s": round(time.time() - started, 3)})
        self.current_run = None
        await self.connections.close_retired()
        self.on_change()
        registry = self.loaded.config.registry
        if registry is not None and registry.keep and counts.get("built"):
            # Between runs, never beside one: a run may make an old key current
            # again while the plan to delete it is being carried out.
            await self._gc(registry.keep)

    async def _registry_down(self, report: RunReport) -> bool:
        """After failures: does the registry still answer? A push that failed
        because it went away is tried again by itself once it answers."""
        config, client = self.loaded.config, self.connections.registry
        if config.registry is None or client is None or \
                not report.by_outcome(Outcome.FAILED):
            return False
        return not await client.answers(parse_repository(config.registry.repository("_")))

    def _note_failure(self, lid: str, result: NodeResult[LayerResult],
                      registry_down: bool) -> None:
        if result.outcome in (Outcome.BUILT, Outcome.REUSED):
            self.failures.succeeded(lid)
        elif result.outcome is Outcome.FAILED:
            error = result.error
            retry = isinstance(error, (PublishFailed, RegistryError)) or registry_down
            layer = self.loaded.catalog.layers.get(lid)
            entry = self.failures.failed(lid, retry=retry,
                                         cap_s=layer.rebuild_every_s if layer else None)
            if retry:
                self.bus.publish("build_retry_scheduled", {
                    "layer": lid, "failures": entry.failures,
                    "retry_in_s": round(entry.not_before - time.time(), 1),
                    "error": str(error)}, "warning")

    async def _gc(self, keep: int) -> None:
        """Registry retention after a run that pushed something, before the next run."""
        await apply_retention(self.loaded.config, self.loaded.catalog, self.state,
                              self.connections.client, keep,
                              lambda event, fields: self.bus.publish(
                                  event, fields, "warning" if "failed" in event else "info"))

    def _on_pipeline_event(self, event: str, fields: dict[str, Any]) -> None:
        self.metrics.build_event(event, fields)
        level = "error" if fields.get("outcome") == "failed" or \
            event == "state_write_failed" else "info"
        # A reuse is news to live views (the web page, run --once), not to the log.
        self.bus.publish(event, fields, "debug" if event == "layer_up_to_date" else level)
        if event in ("build_started", "build_finished"):
            self.on_change()



def causes(entries: list[Entry], parents: dict[str, str | None]
           ) -> Callable[[str], tuple[str | None, str | None]]:
    """Why each layer of a run builds, for its history: the entry that queued it,
    or the nearest ancestor's ("parent NAME: CAUSE"), with that entry's request."""
    by_layer = {e.layer: e for e in entries}

    def cause_of(layer: str) -> tuple[str | None, str | None]:
        for lid in (layer, *graph.ancestors(parents, layer)):
            if lid in by_layer:
                entry = by_layer[lid]
                cause = entry.cause if lid == layer else f"parent {lid}: {entry.cause}"
                return cause, entry.request_id
        return "dependency of a triggered layer", None

    return cause_of
