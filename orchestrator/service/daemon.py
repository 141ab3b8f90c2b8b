"""``orchestrator run``: reconcile at start, then watch files and upstreams, take
triggers on the control socket, and rebuild what goes stale.

Startup -> main loop -> shutdown with a bounded drain. Signal handlers only
set flags. Every background task is owned by ``self._tasks`` and reaped.
All durable facts (queue, builds, layer and upstream state) live in SQLite,
so a kill -9 loses nothing: the next start marks interrupted builds, puts
their layers back in the queue and reuses every image already pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import structlog

from orchestrator.build.pipeline import LayerResult, Pipeline, RunReport, targets, upstreams_used
from orchestrator.build.runs import STATE_DB, catalog_revision, enforce_policy, load
from orchestrator.build.scheduler import NodeResult
from orchestrator.build.state import StateStore, prune_logs
from orchestrator.catalog.context import read_contexts
from orchestrator.catalog.layers import select
from orchestrator.core import graph
from orchestrator.core.errors import InputError, OrchestratorError, UpstreamError
from orchestrator.core.model import Catalog, Config, Outcome, ResolvedUpstream
from orchestrator.core.plan import is_due, short_digest
from orchestrator.engines.factory import docker_config_dir, insecure_hosts, make_builders
from orchestrator.engines.pool import BuilderPool
from orchestrator.engines.runner import CommandRunner
from orchestrator.registry.aiohttp_transport import AiohttpTransport
from orchestrator.registry.auth import AuthStore
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.upstream import UpstreamPoller, resolve
from orchestrator.service.events import EventBus
from orchestrator.service.metrics import Metrics
from orchestrator.service.sdnotify import (
    Notifier,
    forget_activation_env,
    listen_sockets,
    watchdog_interval,
)
from orchestrator.service.watch import LayerChange, watch_layers

log = structlog.get_logger("orchestrator.service.daemon")
BACKEND_RETRY_S = (1, 2, 5, 10, 30)
LAYERS_VIEW_TTL_S = 5.0


class Control(Protocol):
    """The control socket server, started before READY and stopped last."""

    where: str

    async def start(self, inherited: list[socket.socket]) -> None: ...

    async def stop(self) -> None: ...


class Refused(OrchestratorError):
    """A request the daemon will not take now (stopping, unknown build…)."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class Daemon:
    def __init__(self, config_path: Path, control_factory: Callable[[Daemon], Control], *,
                 once: bool = False, runner: CommandRunner | None = None) -> None:
        self.config_path = config_path
        self.control_factory = control_factory  # the control socket server (api.py)
        self.once = once  # burst mode: reconcile, drain the queue, exit
        self.runner = runner
        self.bus = EventBus()
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.watchdog_s = watchdog_interval()
        self.listen = listen_sockets()
        # Nothing we start (builders, git) may see systemd's variables.
        forget_activation_env()
        self.config: Config
        self.catalog: Catalog
        self.state: StateStore
        self.pool: BuilderPool
        self.registry: RegistryClient
        self.phase = "starting"
        self.backend_error: str | None = None
        self.upstream_values: dict[str, ResolvedUpstream] = {}
        self.upstream_errors: dict[str, UpstreamError] = {}
        self.pollers: dict[str, UpstreamPoller] = {}
        self.current: Pipeline | None = None
        self.current_run: dict[str, Any] | None = None
        self.dirty: set[str] = set()  # layers triggered while the current run goes on
        # Each layer's outcome in the last run that covered it (skips included,
        # which never reach the build history).
        self.last_results: dict[str, dict[str, Any]] = {}
        # Bumped by anything that can change a plan; keys the layers-view cache.
        self._generation = 0
        self._layers_cache: tuple[int, float, list[dict[str, Any]]] | None = None
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._watch_stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._exit_code = 0
        self._api: Control | None = None

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        self.config, self.catalog = load(self.config_path)  # bad input: exit 2 at start
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_reload)
        with docker_config_dir(self.config.auth_file) as docker_config:
            try:
                await self._startup(docker_config)
                await self._stop.wait()
            finally:
                await self._shutdown()
        return self._exit_code

    def request_stop(self) -> None:
        """Signal handler: only sets the flag; shutdown happens in the main flow."""
        self._stop.set()

    async def _startup(self, docker_config: Path | None) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = StateStore(self.config.state_dir / STATE_DB)
        if self.state.moved_aside is not None:
            self.bus.publish("state_corrupt", {"moved_to": str(self.state.moved_aside)},
                             "error")
        self._recover()
        self.registry = RegistryClient(AuthStore.load(self.config.auth_file),
                                       transport=AiohttpTransport(),
                                       insecure=frozenset(insecure_hosts(self.config)),
                                       on_request=self.metrics.registry_request)
        self.pool = BuilderPool(make_builders(self.config, self.runner, docker_config),
                                on_event=self.bus.publish)
        self._api = self.control_factory(self)
        await self._api.start(self.listen)
        self._own("watchdog", self._watchdog())
        await self._wait_for_backend()
        if self._stop.is_set():
            return
        await self._resolve_upstreams()
        self.trigger(list(self.catalog.layers), force=False, cause="startup reconcile")
        self.phase = "ready"
        self.notifier.notify("READY=1", self._status_line())
        self.bus.publish("daemon_ready", {"layers": len(self.catalog.layers),
                                          "socket": self._api.where,
                                          "builders": [m.name for m in self.pool.members]})
        self._own("runner", self._run_loop())
        self._start_watchers()

    def _recover(self) -> None:
        interrupted = self.state.mark_interrupted()
        for build in interrupted:
            self.bus.publish("build_interrupted", {"layer": build["layer"],
                                                   "build_id": build["id"]}, "warning")
        for build in interrupted:
            if build["layer"] in self.catalog.layers:
                self.state.enqueue(build["layer"], force=False,
                                   cause=f"re-run after interrupted build {build['id']}",
                                   request_id=_new_id("r"))
        # What the dead run was serving waits again, merged into the entries above.
        requeued = self.state.requeue_taken()
        if interrupted or requeued:
            self.bus.publish("state_recovered", {"interrupted": len(interrupted),
                                                 "requeued": requeued})

    async def _wait_for_backend(self) -> None:
        """READY only once a builder answers; until then say why, and retry."""
        for attempt in range(1_000_000):
            if await self.pool.check_all():
                self.backend_error = None
                return
            self.backend_error = "no builder answers: " + self.pool.why_waiting()
            delay = BACKEND_RETRY_S[min(attempt, len(BACKEND_RETRY_S) - 1)]
            self.bus.publish("backend_unavailable", {"error": self.backend_error,
                                                     "retry_in_s": delay}, "error")
            self.notifier.notify(f"STATUS=waiting for a builder: {self.backend_error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return

    async def _shutdown(self) -> None:
        self.phase = "stopping"
        self.notifier.notify("STOPPING=1", "STATUS=stopping: draining running builds")
        self.bus.publish("daemon_stopping", {"drain_timeout_s": self.config.daemon.drain_s})
        self._watch_stop.set()
        self._wakeup.set()
        runner = self._tasks.pop("runner", None)
        if runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(runner), self.config.daemon.drain_s)
            except TimeoutError:
                self.bus.publish("drain_timeout", {"running": self._running_layers()},
                                 "warning")
                runner.cancel()  # stops builders' process groups; builds recorded cancelled
                await asyncio.gather(runner, return_exceptions=True)
            except Exception as exc:  # already logged by the loop; do not mask shutdown
                log.error("runner_failed", error=str(exc))
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if hasattr(self, "state"):
            self.state.requeue_taken()  # what was not served waits for the next start
            self.state.close()
        if self._api is not None:
            await self._api.stop()
        if hasattr(self, "registry"):
            await self.registry.close()
        self.bus.publish("daemon_stopped", {})
        self.bus.close()
        self.notifier.close()

    def _own(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._reap(name, t))

    def _reap(self, name: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task_failed", task=name, error=repr(exc), exc_info=exc)
            if name in ("runner", "watchdog"):  # the daemon cannot go on without these
                self._exit_code = 1
                self._stop.set()

    async def _watchdog(self) -> None:
        if self.watchdog_s is None:
            return
        # From the event loop itself: a wedged loop stops the pings and systemd
        # restarts us, which is the point.
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s)

    # -- watchers -------------------------------------------------------------

    def _start_watchers(self) -> None:
        if self.once:
            return
        self._watch_stop = asyncio.Event()
        self._own("watch-files", watch_layers(self.config.layers_dir, self._on_files,
                                              self._watch_stop, self.config.daemon.debounce_s))
        for name, poller in self.pollers.items():
            self._own(f"poll-{name}", poller.run(self._watch_stop))
        self._own("schedule", self._schedule_loop())
        self._own("prune-logs", self._prune_logs_loop())

    async def _restart_watchers(self) -> None:
        self._watch_stop.set()
        names = [n for n in self._tasks if n.startswith(("watch-", "poll-", "schedule"))]
        tasks = [self._tasks.pop(n) for n in names]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._start_watchers()

    async def _on_files(self, change: LayerChange) -> None:
        if change.catalog_changed:
            try:
                self._load_catalog_only()
            except InputError as exc:
                self.bus.publish("catalog_refused", {"error": str(exc)}, "error")
                return
        for folder, path in change.folders.items():
            ids = [lid for lid, layer in self.catalog.layers.items() if layer.name == folder]
            if ids:
                self.trigger(ids, force=False, cause=f"file changed: {path}")

    def _load_catalog_only(self) -> None:
        _, catalog = load(self.config_path)
        self.catalog = catalog
        self._generation += 1
        self.bus.publish("catalog_reloaded", {"layers": len(catalog.layers)})

    def _needed_upstreams(self) -> set[str]:
        return set().union(*(upstreams_used(layer) for layer in self.catalog.layers.values()))

    async def _resolve_upstreams(self) -> None:
        async def resolver(spec: Any) -> ResolvedUpstream:
            return await resolve(spec, self.registry)

        self.pollers = {
            name: UpstreamPoller(self.config.upstreams[name], resolver, self._on_upstream,
                                 self._on_upstream_error)
            for name in sorted(self._needed_upstreams())
        }
        await asyncio.gather(*(p.check() for p in self.pollers.values()))

    async def _on_upstream(self, value: ResolvedUpstream) -> None:
        self.metrics.upstream_checks.labels(value.name, "ok").inc()
        recovered = self.upstream_errors.pop(value.name, None) is not None
        previous = self.state.upstream(value.name)
        changed = previous is not None and (previous["digest"], previous["tag"]) != (
            value.digest, value.tag)
        self.state.save_upstream(value.name, value.tag, value.digest, value.ref, changed)
        self.upstream_values[value.name] = value
        rooted = [lid for lid, layer in self.catalog.layers.items()
                  if value.name in upstreams_used(layer)]
        if recovered and not changed and rooted and self.phase == "ready":
            self.bus.publish("upstream_recovered", {"upstream": value.name})
            self.trigger(rooted, force=False, cause=f"upstream {value.name} reachable again")
        if not changed:
            return
        assert previous is not None
        old = f"{previous['tag']}@{short_digest(previous['digest'])}"
        new = f"{value.tag}@{short_digest(value.digest)}"
        self.bus.publish("upstream_changed", {"upstream": value.name, "old": old, "new": new})
        if rooted and self.phase == "ready":
            self.trigger(rooted, force=False, cause=f"upstream {value.name} changed: "
                         f"{old} -> {new}")

    def _on_upstream_error(self, exc: UpstreamError, retry_in: float) -> None:
        self.metrics.upstream_checks.labels(exc.upstream, "error").inc()
        self.upstream_errors[exc.upstream] = exc
        self.bus.publish("upstream_check_failed", {"upstream": exc.upstream, "error": str(exc),
                                                   "retry_in_s": round(retry_in, 1)}, "warning")

    async def _schedule_loop(self) -> None:
        while not self._watch_stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_stop.wait(),
                                       self.config.daemon.schedule_check_s)
            now = time.time()
            due = []
            for lid, layer in self.catalog.layers.items():
                record = self.state.layer(lid)
                if record and is_due(record.built_at, layer.rebuild_every_s, now):
                    due.append(lid)
            queued = {row["layer"] for row in self.state.queued(taken=False)}
            due = [lid for lid in due if lid not in queued and lid not in self._running_layers()]
            if due:
                self.trigger(due, force=False, cause="scheduled (rebuild.every)")

    async def _prune_logs_loop(self) -> None:
        while not self._watch_stop.is_set():
            removed = await asyncio.to_thread(self._prune_logs)
            if removed:
                self.bus.publish("logs_pruned", {"removed": removed})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_stop.wait(), 3600)

    def _prune_logs(self) -> int:
        running = set(self.current.running) if self.current else set()
        return prune_logs(self.config.state_dir / "logs",
                          time.time() - self.config.daemon.log_retention_s, running)

    # -- requests ---------------------------------------------------------------

    def trigger(self, names: list[str], *, force: bool, cause: str) -> dict[str, Any]:
        """Queue layers (folder names or ids); coalesces with what is waiting."""
        if self.phase == "stopping":
            raise Refused("the daemon is stopping", 503)
        ids = select(self.catalog, names)  # InputError for unknown names
        request_id = _new_id("r")
        served_by = {lid: self.state.enqueue(lid, force=force, cause=cause,
                                             request_id=request_id) for lid in ids}
        self.dirty.update(ids)
        self.bus.publish("trigger_received", {"layers": ids, "force": force, "trigger": cause,
                                              "request_id": request_id})
        self._queue_changed()
        self._wakeup.set()
        return {"id": next(iter(served_by.values()), request_id), "layers": ids,
                "requests": sorted(set(served_by.values()))}

    def cancel(self, build_id: str) -> None:
        if self.current is not None and self.current.cancel(build_id):
            self.bus.publish("build_cancel_requested", {"build_id": build_id})
            return
        if self.state.build(build_id) is None:
            raise Refused(f"no build {build_id}", 404)
        raise Refused(f"build {build_id} is not running", 409)

    async def reload(self) -> None:
        """SIGHUP / POST /v1/reload: a bad config or catalog is refused, the old kept."""
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            config, catalog = load(self.config_path)
        except InputError as exc:
            self.bus.publish("reload_refused", {"error": str(exc)}, "error")
            raise
        finally:
            self.notifier.notify("READY=1", self._status_line())
        self.config, self.catalog = config, catalog
        self._generation += 1
        self.bus.publish("reloaded", {"layers": len(catalog.layers)})
        if self.phase == "ready":
            await self._resolve_upstreams()
            await self._restart_watchers()
            self.trigger(list(catalog.layers), force=False, cause="reload")

    def _spawn_reload(self) -> None:
        async def reload_logged() -> None:
            with contextlib.suppress(InputError):
                await self.reload()

        self._own(f"reload-{time.monotonic_ns()}", reload_logged())

    # -- the run loop -----------------------------------------------------------

    async def _run_loop(self) -> None:
        while not self._stop.is_set():
            if not self.state.queued(taken=False):
                if self.once:
                    self._stop.set()
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._execute(self.state.take_queue())

    async def _execute(self, entries: list[dict[str, Any]]) -> None:
        self.dirty = set()
        entries = [e for e in entries if e["layer"] in self.catalog.layers]
        if not entries:
            return
        catalog, config = self.catalog, self.config
        parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
        selected = [e["layer"] for e in entries]
        order = targets(catalog, selected)
        forced = frozenset(graph.descendants(parents, [e["layer"] for e in entries
                                                       if e["force"]]))
        by_layer = {e["layer"]: e for e in entries}
        run_id = _new_id("run")
        self.current_run = {"id": run_id, "started": time.time(), "layers": order,
                            "requests": sorted({e["request_id"] for e in entries})}
        self._queue_changed()

        def cause_of(layer: str) -> tuple[str | None, str | None]:
            for lid in (layer, *graph.ancestors(parents, layer)):
                if lid in by_layer:
                    entry = by_layer[lid]
                    cause = entry["cause"] if lid == layer else f"parent {lid}: {entry['cause']}"
                    return cause, entry["request_id"]
            return "dependency of a triggered layer", None

        def superseded(layer: str) -> bool:
            if self._stop.is_set():
                return True  # draining: no new builds start
            return any(lid in self.dirty for lid in (layer, *graph.ancestors(parents, layer)))

        try:
            enforce_policy(catalog, lambda line: self.bus.publish(
                "policy_warning", {"finding": line}, "warning"))
            contexts = await asyncio.to_thread(read_contexts,
                                               [catalog.layers[lid] for lid in order])
        except InputError as exc:
            self.bus.publish("run_refused", {"error": str(exc)}, "error")
            self.state.finish_queue([e["id"] for e in entries])
            self.current_run = None
            return
        self.current = Pipeline(
            config, catalog, self.pool, self.state,
            self.registry if config.registry is not None else None,
            self.upstream_values, upstream_errors=dict(self.upstream_errors),
            contexts=contexts, revision=lambda: catalog_revision(config.layers_dir),
            forced=forced,
            on_event=self._on_pipeline_event, cause_of=cause_of, superseded=superseded,
        )
        self.bus.publish("run_started", {"run_id": run_id, "layers": len(order)})
        started = time.time()
        try:
            report = await self.current.run(order)
        finally:
            self.current = None
        self._after_run(report, entries, run_id, started)

    def _after_run(self, report: RunReport, entries: list[dict[str, Any]], run_id: str,
                   started: float) -> None:
        # Deferred layers (superseded by a newer change, or not started because
        # we are stopping) wait for the next run.
        for lid, result in report.results.items():
            if result.outcome is Outcome.SUPERSEDED or (
                    result.outcome is Outcome.CANCELLED and self._stop.is_set()):
                self.state.enqueue(lid, force=False, cause="deferred from run " + run_id,
                                   request_id=_new_id("r"))
            self._count(lid, result)
            self.last_results[lid] = {
                "outcome": result.outcome.value, "at": time.time(),
                "why": result.skipped_because or (str(result.error) if result.error else None),
                "build_id": result.value.build_id if result.value else None,
            }
        self.state.finish_queue([e["id"] for e in entries])
        counts = {o.value: len(report.by_outcome(o)) for o in Outcome if report.by_outcome(o)}
        self.bus.publish("run_finished", {"run_id": run_id, "outcome": "ok" if report.ok
                                          else "failed", "counts": counts,
                                          "duration_s": round(time.time() - started, 3)})
        self.current_run = None
        self._queue_changed()

    def _count(self, layer: str, result: NodeResult[LayerResult]) -> None:
        if result.outcome in (Outcome.BUILT, Outcome.REUSED):
            self.metrics.last_success.labels(layer).set(time.time())
        if result.outcome is not Outcome.REUSED:
            self.metrics.builds.labels(layer, result.outcome.value).inc()
        else:
            self.metrics.builds.labels(layer, "up_to_date").inc()

    def _on_pipeline_event(self, event: str, fields: dict[str, Any]) -> None:
        if event == "build_started":
            self.metrics.running.inc()
        elif event == "build_finished":
            self.metrics.running.dec()
            if "duration_s" in fields:
                self.metrics.duration.labels(fields["layer"]).observe(fields["duration_s"])
        level = "error" if fields.get("outcome") == "failed" else "info"
        if event != "layer_up_to_date":
            self.bus.publish(event, fields, level)
        self.notifier.notify(self._status_line())

    # -- views ----------------------------------------------------------------

    def _pool_up(self) -> bool:
        return hasattr(self, "pool") and self.pool.any_up()

    def _running_layers(self) -> list[str]:
        return [layer for layer, _ in self.current.running.values()] if self.current else []

    def _queue_changed(self) -> None:
        self._generation += 1
        self.metrics.queue_depth.set(len(self.state.queued(taken=False)))
        self.notifier.notify(self._status_line())

    def _status_line(self) -> str:
        waiting = len(self.state.queued(taken=False)) if hasattr(self, "state") else 0
        running = self._running_layers()
        text = f"STATUS={self.phase}: {len(running)} building"
        if running:
            text += f" ({', '.join(running[:3])}{'…' if len(running) > 3 else ''})"
        return text + f", {waiting} queued"

    def status(self) -> dict[str, Any]:
        running = []
        if self.current is not None:
            for build_id, (layer, _) in self.current.running.items():
                row = self.state.build(build_id) or {}
                running.append({"build_id": build_id, "layer": layer,
                                "started": row.get("started_at"), "builder": row.get("builder"),
                                "reason": row.get("reason")})
        return {
            "phase": self.phase,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "backend": {"name": ", ".join(m.name for m in self.pool.members)
                        if hasattr(self, "pool") else None,
                        "error": self.backend_error if not self._pool_up() else None},
            "builders": self.pool.status() if hasattr(self, "pool") else [],
            "queue": self.state.queued(taken=False),
            "run": self.current_run,
            "running": running,
            "upstreams": {
                name: {
                    "tag": self.upstream_values[name].tag if name in self.upstream_values
                    else None,
                    "digest": self.upstream_values[name].digest
                    if name in self.upstream_values else None,
                    "last_check": poller.last_check, "next_check": poller.next_check,
                    "error": poller.last_error,
                } for name, poller in self.pollers.items()
            },
        }

    async def layers_view(self) -> list[dict[str, Any]]:
        """Each layer with its key, digest, last outcome and whether (and why) it is stale.

        Planning asks the registry about every layer, so a `status --watch`
        polling each second reuses an answer younger than LAYERS_VIEW_TTL_S
        unless something happened since (a trigger, a run, a reload)."""
        cached = self._layers_cache
        if cached is not None and cached[0] == self._generation and \
                time.monotonic() - cached[1] < LAYERS_VIEW_TTL_S:
            return self._with_live_state(cached[2])
        generation = self._generation
        view = await self._plan_view()
        self._layers_cache = (generation, time.monotonic(), view)
        return self._with_live_state(view)

    def _with_live_state(self, view: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Building/queued/failed change by the second: always fresh."""
        running = {layer: build_id for build_id, (layer, _) in
                   (self.current.running.items() if self.current else [])}
        queued = {row["layer"] for row in self.state.queued(taken=False)}
        out = []
        for entry in view:
            lid = entry["layer"]
            last = self.state.last_build(lid)
            out.append({**entry, "last_outcome": last["outcome"] if last else None,
                        **self._layer_state(lid, entry["stale"], running, queued, last)})
        return out

    async def _plan_view(self) -> list[dict[str, Any]]:
        catalog, config = self.catalog, self.config
        order = list(catalog.layers)
        contexts = await asyncio.to_thread(read_contexts, catalog.layers.values())
        planner = Pipeline(config, catalog, self.pool, self.state,
                           self.registry if config.registry is not None else None,
                           self.upstream_values, upstream_errors=dict(self.upstream_errors),
                           contexts=contexts, dry_run=True)
        report = await planner.run(order)
        out = []
        for lid in order:
            layer, result = catalog.layers[lid], report.results[lid]
            record = self.state.layer(lid)
            value = result.value
            out.append({
                "layer": lid, "image": layer.image, "parent": layer.parent,
                "upstream": layer.upstream, "tags": list(layer.tags),
                "build_key": value.key if value else None,
                "digest": record.digest if record else None,
                "stale": bool(value and value.decision.build) if value else None,
                "why": value.decision.describe() if value and value.decision.build
                else (str(result.error) if result.error else result.skipped_because),
            })
        return out

    def _layer_state(self, lid: str, stale: bool | None, running: dict[str, str],
                     queued: set[str], last_build: dict[str, Any] | None) -> dict[str, Any]:
        """One word for a status view, most urgent first, and what goes with it."""
        if lid in running:
            row = self.state.build(running[lid]) or {}
            return {"state": "building", "build_id": running[lid],
                    "since": row.get("started_at"), "builder": row.get("builder")}
        if lid in queued:
            return {"state": "queued"}
        last = self.last_results.get(lid)
        if last is None and last_build and last_build["outcome"] == "failed":
            last = {"outcome": "failed", "why": None, "build_id": last_build["id"]}
        if last and last["outcome"] == "failed":
            error = (last_build or {}).get("error") or last["why"] or ""
            return {"state": "failed", "error": error.splitlines()[0] if error else "",
                    "build_id": last["build_id"] or (last_build or {}).get("id")}
        if last and last["outcome"] == "skipped":
            return {"state": "skipped", "error": last["why"]}
        if stale:
            return {"state": "stale"}
        return {"state": "up_to_date"}


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
