"""``orchestrator run``: reconcile at start, then watch files and upstreams, take
triggers on the control socket, and rebuild what goes stale.

Startup -> main loop -> shutdown with a bounded drain. Signal handlers only
set flags. Every background task is owned by ``self._tasks`` and reaped; no
ordinary fault (an unreadable file, an unreachable registry, a broken
``layer.toml``) ends the daemon: it is reported and the last good state kept.
All durable facts (queue, requests, builds, layer and upstream state) live in
SQLite, so a kill -9 loses nothing: the next start marks interrupted builds,
clears what they left behind, puts their layers back in the queue and reuses
every image already pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import structlog

from orchestrator.build.attest import Attestor
from orchestrator.build.lock import StateLock
from orchestrator.build.pipeline import LayerResult, Pipeline, RunReport, targets, upstreams_used
from orchestrator.build.runs import (
    STATE_DB,
    apply_retention,
    catalog_revision,
    check_platforms,
    clear_scratch,
    enforce_policy,
    engine_kinds,
    load,
    make_attestor,
    recover_interrupted,
)
from orchestrator.build.scheduler import NodeResult
from orchestrator.build.snapshot import scratch_path
from orchestrator.build.state import AsyncStateStore, StateStore, prune_logs, restrict
from orchestrator.catalog.context import ignore_file, load_ignore, read_contexts
from orchestrator.catalog.layers import LAYER_FILE, select
from orchestrator.core import graph
from orchestrator.core.dockerignore import DockerIgnore
from orchestrator.core.errors import InputError, OrchestratorError
from orchestrator.core.model import Catalog, Config, Outcome, UpstreamSpec
from orchestrator.core.plan import is_due
from orchestrator.engines.factory import docker_config_dir, insecure_hosts, make_builders
from orchestrator.engines.pool import BuilderPool
from orchestrator.engines.runner import CommandRunner
from orchestrator.registry.aiohttp_transport import AiohttpTransport
from orchestrator.registry.auth import AuthStore
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.upstream import Backoff, resolve
from orchestrator.service.events import EventBus
from orchestrator.service.metrics import Metrics
from orchestrator.service.queue import Entry, WorkQueue
from orchestrator.service.sdnotify import (
    Notifier,
    forget_activation_env,
    listen_sockets,
    watchdog_interval,
)
from orchestrator.service.upstreams import UpstreamWatch
from orchestrator.service.views import Views
from orchestrator.service.watch import (
    IGNORE_FILES,
    FolderRules,
    LayerChange,
    LayerFilter,
    watch_layers,
)
from orchestrator.service.webhooks import Webhooks

log = structlog.get_logger("orchestrator.daemon")
BACKEND_RETRY_S = (1, 2, 5, 10, 30)
REQUEST_RETENTION_S = 7 * 86400.0


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
        self.state: AsyncStateStore
        self.queue: WorkQueue
        self.upstreams: UpstreamWatch
        self.pool: BuilderPool | None = None
        self.registry: RegistryClient
        self.attestor: Attestor | None = None
        self.views = Views(self)
        self.phase = "starting"
        self.backend_error: str | None = None
        self.blocked: str | None = None  # why queued work waits (a refused run)
        self.current: Pipeline | None = None
        self.current_run: dict[str, Any] | None = None
        # Each layer's outcome in the last run that covered it (skips included,
        # which never reach the build history).
        self.last_results: dict[str, dict[str, Any]] = {}
        # Layers whose builds keep failing: (consecutive failures, not before).
        self.retry_after: dict[str, tuple[int, float]] = {}
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._watch_stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._exit_code = 0
        self._api: Control | None = None
        self._reload_lock = asyncio.Lock()
        self._lock = StateLock(Path("."))
        # Registry clients and credential folders replaced by a reload: the run in
        # progress may still use them, so they are closed when it ends.
        self._connection = contextlib.ExitStack()
        self._retired: list[tuple[RegistryClient, contextlib.ExitStack]] = []
        self._filter: LayerFilter | None = None

    @property
    def engines(self) -> tuple[str, ...]:
        return engine_kinds(self.config)

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        self.config, self.catalog = load(self.config_path)  # bad input: exit 2 at start
        check_platforms(self.config, self.catalog)
        self._lock = StateLock(self.config.state_dir).acquire("daemon")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_reload)
        try:
            await self._startup()
            await self._stop.wait()
        finally:
            await self._shutdown()
            self._lock.release()
        return self._exit_code

    def request_stop(self) -> None:
        """Signal handler: only sets the flag; shutdown happens in the main flow."""
        self._stop.set()

    async def _startup(self) -> None:
        config = self.config
        group = config.daemon.socket_group
        config.state_dir.mkdir(parents=True, exist_ok=True)
        # History and logs are for the socket's users only: same group rule.
        restrict(config.state_dir, 0o750 if group is None else 0o770, group)
        (config.state_dir / "logs").mkdir(exist_ok=True)
        restrict(config.state_dir / "logs", 0o750 if group is None else 0o770, group)
        removed = await asyncio.to_thread(clear_scratch, config.state_dir,
                                          scratch_path(config.scratch, config.state_dir))
        self.state = AsyncStateStore(await asyncio.to_thread(
            StateStore, config.state_dir / STATE_DB, group))
        self.queue = WorkQueue(self.state)
        if self.state.moved_aside is not None:
            self.bus.publish("state_corrupt", {"moved_to": str(self.state.moved_aside)},
                             "error")
        self.upstreams = UpstreamWatch(self.state, self._resolve, self.bus.publish,
                                       self._on_upstream_change, self._count_check)
        self.webhooks = Webhooks(self.state, config.notify)
        self.bus.listeners.append(self.webhooks.notice)
        await self._connect(config)
        await self._recover(removed)
        self._api = self.control_factory(self)
        await self._api.start(self.listen)
        self._own("watchdog", self._watchdog())
        await self._wait_for_backend()
        if self._stop.is_set():
            return
        await self.upstreams.sync(config.upstreams, self._needed_upstreams(),
                                  start_polling=not self.once)
        await self.queue.add(list(self.catalog.layers), force=False, cause="startup reconcile")
        self.upstreams.live = True
        self.phase = "ready"
        self.notifier.notify("READY=1", await self._status_line())
        self.bus.publish("daemon_ready", {"layers": len(self.catalog.layers),
                                          "socket": self._api.where,
                                          "builders": [m.name for m in self._pool.members]})
        self._own("runner", self._run_loop())
        self._start_watchers()

    async def _connect(self, config: Config) -> None:
        """Registry client, credentials and builder pool from ``config`` (at start and
        on every reload; a run in progress keeps the ones it started with)."""
        if hasattr(self, "registry"):
            self._retired.append((self.registry, self._connection))
            self._connection = contextlib.ExitStack()
        docker_config = self._connection.enter_context(
            docker_config_dir(config.auth_file, config.state_dir / "tmp"))
        self.registry = RegistryClient(AuthStore.load(config.auth_file),
                                       transport=AiohttpTransport(),
                                       insecure=frozenset(insecure_hosts(config)),
                                       on_request=self.metrics.registry_request)
        self.pool = BuilderPool(make_builders(config, self.runner, docker_config),
                                on_event=self.bus.publish)
        self.attestor = make_attestor(config, self.registry)

    @property
    def _pool(self) -> BuilderPool:
        assert self.pool is not None
        return self.pool

    async def _recover(self, scratch_removed: int) -> None:
        interrupted, cleaned = await recover_interrupted(self.state, self._pool)
        for build in interrupted:
            self.bus.publish("build_interrupted", {"layer": build["layer"],
                                                   "build_id": build["id"]}, "warning")
        requeued_layers = [b["layer"] for b in interrupted if b["layer"] in self.catalog.layers]
        if requeued_layers:
            await self.queue.add(sorted(set(requeued_layers)), force=False,
                                 cause="re-run after interrupted build "
                                       + ", ".join(b["id"] for b in interrupted))
        # What the dead run was serving waits again, merged into the entries above
        # (its force and request ids kept).
        requeued = await self.state.requeue_taken()
        if interrupted or requeued or scratch_removed or cleaned:
            self.bus.publish("state_recovered", {"interrupted": len(interrupted),
                                                 "requeued": requeued,
                                                 "scratch_removed": scratch_removed,
                                                 "containers_removed": cleaned})

    async def _wait_for_backend(self) -> None:
        """READY only once a builder answers; until then say why, and retry."""
        attempt = 0
        while not self._stop.is_set():
            if await self._pool.check_all():
                self.backend_error = None
                return
            self.backend_error = "no builder answers: " + self._pool.why_waiting()
            delay = BACKEND_RETRY_S[min(attempt, len(BACKEND_RETRY_S) - 1)]
            attempt += 1
            self.bus.publish("backend_unavailable", {"error": self.backend_error,
                                                     "retry_in_s": delay}, "error")
            self.notifier.notify(f"STATUS=waiting for a builder: {self.backend_error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _shutdown(self) -> None:
        self.phase = "stopping"
        self.notifier.notify("STOPPING=1", "STATUS=stopping: draining running builds")
        self.bus.publish("daemon_stopping", {"drain_timeout_s": self.config.daemon.drain_s})
        self._watch_stop.set()
        if hasattr(self, "queue"):
            self.queue.wakeup.set()
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
        if hasattr(self, "upstreams"):
            await self.upstreams.close()
        # Event streams end before the server stops: the server waits for open
        # responses, and a follower would otherwise hold the stop for minutes.
        self.bus.close()
        if self._api is not None:
            await self._api.stop()
        if hasattr(self, "state"):
            with contextlib.suppress(Exception):
                await self.state.requeue_taken()  # not served: waits for the next start
            await self.state.close()
        await self._close_retired()
        if hasattr(self, "registry"):
            await self.registry.close()
        self._connection.close()
        self.bus.publish("daemon_stopped", {})
        self.notifier.close()

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for client, stack in retired:
            await client.close()
            stack.close()

    def _own(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._reap(name, t))

    def _reap(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
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

    def _folder_rules(self, folder: str) -> FolderRules:
        """What matters in a layer folder: never raises (a broken ignore file
        makes every change relevant until it is fixed; the run reports it)."""
        metadata = {LAYER_FILE, "Dockerfile", *IGNORE_FILES}
        layers = [layer for layer in self.catalog.layers.values() if layer.name == folder]
        try:
            if not layers:
                return FolderRules(load_ignore(self.config.layers_dir / folder,
                                               ".dockerignore"), frozenset(metadata))
            layer = layers[0]
            with contextlib.suppress(ValueError):
                metadata.add(layer.dockerfile.relative_to(layer.folder).as_posix())
            if layer.context != layer.folder:  # the context lives elsewhere
                return FolderRules(DockerIgnore([]), frozenset(metadata))
            name = ignore_file(layer, self.engines)
            return FolderRules(load_ignore(layer.context, name, self.engines[0]),
                               frozenset(metadata))
        except InputError:
            return FolderRules(DockerIgnore([]), frozenset(metadata))

    def _outside_contexts(self) -> dict[Path, tuple[str, DockerIgnore]]:
        """Contexts that live outside the layers folder, watched too (with their
        ignore rules: a change there rebuilds the layer like one in its folder)."""
        out: dict[Path, tuple[str, DockerIgnore]] = {}
        for layer in self.catalog.layers.values():
            if layer.context == layer.folder or layer.context in out:
                continue
            try:
                ignore = load_ignore(layer.context, ignore_file(layer, self.engines),
                                     self.engines[0])
            except InputError:
                ignore = DockerIgnore([])
            out[layer.context] = (layer.name, ignore)
        return out

    def _start_watchers(self) -> None:
        if self.once:
            return
        self._watch_stop = asyncio.Event()
        self._filter = LayerFilter(self.config.layers_dir, self._folder_rules,
                                   self._outside_contexts())
        self._own("watch-files", watch_layers(self.config.layers_dir, self._on_files,
                                              self._watch_stop, self.config.daemon.debounce_s,
                                              self._filter))
        self._own("schedule", self._schedule_loop())
        self._own("housekeeping", self._housekeeping_loop())
        if self.webhooks.targets:
            self._own("webhooks", self.webhooks.run(self._watch_stop))

    async def _rewatch(self) -> None:
        await self._stop_watchers()
        self._start_watchers()

    async def _stop_watchers(self) -> None:
        self._watch_stop.set()
        names = [n for n in self._tasks if n.startswith(("watch-", "schedule", "housekeeping",
                                                          "webhooks"))]
        tasks = [self._tasks.pop(n) for n in names]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_files(self, change: LayerChange) -> None:
        """A burst of saves. Never raises: the watcher must outlive any bad edit."""
        try:
            broken: set[str] = set()
            if change.catalog_changed:
                try:
                    await self._reload_catalog()
                except InputError as exc:
                    # The old catalog stays; the other folders' edits still count.
                    self.bus.publish("catalog_refused", {"error": str(exc)}, "error")
                    broken = set(change.catalog_folders)
            for folder, path in change.folders.items():
                if folder in broken:
                    continue
                ids = [lid for lid, layer in self.catalog.layers.items() if layer.name == folder]
                if ids:
                    await self.trigger(ids, force=False, cause=f"file changed: {path}")
        except Exception as exc:
            log.error("file_change_failed", error=repr(exc), exc_info=exc)

    async def _reload_catalog(self) -> None:
        _, catalog = await asyncio.to_thread(load, self.config_path)
        before = set(self._outside_contexts())
        self.catalog = catalog
        if set(self._outside_contexts()) != before and not self.once:
            # New folders to watch: restart the watcher from its own task (this
            # runs inside the watcher's callback, which a restart cancels).
            self._own(f"rewatch-{time.monotonic_ns()}", self._rewatch())
        self.views.changed()
        if self._filter is not None:
            self._filter.forget()
        self.bus.publish("catalog_reloaded", {"layers": len(catalog.layers)})
        # A layer.toml may now name an upstream nobody polled yet.
        await self.upstreams.sync(self.config.upstreams, self._needed_upstreams(),
                                  start_polling=not self.once)

    def _needed_upstreams(self) -> set[str]:
        return set().union(*(upstreams_used(layer) for layer in self.catalog.layers.values()))

    async def _resolve(self, spec: UpstreamSpec) -> Any:
        return await resolve(spec, self.registry)

    def _count_check(self, upstream: str, result: str) -> None:
        self.metrics.upstream_checks.labels(upstream, result).inc()

    async def _on_upstream_change(self, upstream: str, cause: str) -> None:
        rooted = [lid for lid, layer in self.catalog.layers.items()
                  if upstream in upstreams_used(layer)]
        if rooted and self.phase == "ready":
            await self.trigger(rooted, force=False, cause=cause)

    async def _schedule_loop(self) -> None:
        while not self._watch_stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_stop.wait(),
                                       self.config.daemon.schedule_check_s)
            try:
                await self._trigger_due()
            except Exception as exc:
                log.error("schedule_check_failed", error=repr(exc), exc_info=exc)

    async def _trigger_due(self) -> None:
        now = time.time()
        queued = {e.layer for e in await self.queue.waiting()}
        running = set(self._running_layers())
        due = []
        for lid, layer in self.catalog.layers.items():
            if layer.rebuild_every_s is None or lid in queued or lid in running:
                continue
            record = await self.state.layer(lid)
            if record is None or not is_due(record.built_at, layer.rebuild_every_s, now):
                continue
            # A scheduled rebuild that keeps failing backs off instead of
            # retrying every check: status shows when it tries next.
            failing = self.retry_after.get(lid)
            if failing is not None and now < failing[1]:
                continue
            due.append(lid)
        if due:
            await self.trigger(due, force=False, cause="scheduled (rebuild.every)")

    async def _housekeeping_loop(self) -> None:
        while not self._watch_stop.is_set():
            try:
                removed = await asyncio.to_thread(self._prune_logs)
                pruned = await self.state.prune_requests(time.time() - REQUEST_RETENTION_S)
                if removed or pruned:
                    self.bus.publish("logs_pruned", {"removed": removed,
                                                     "requests_removed": pruned})
            except Exception as exc:
                log.error("housekeeping_failed", error=repr(exc), exc_info=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_stop.wait(), 3600)

    def _prune_logs(self) -> int:
        running = set(self.current.running) if self.current else set()
        return prune_logs(self.config.state_dir / "logs",
                          time.time() - self.config.daemon.log_retention_s, running)

    # -- requests ---------------------------------------------------------------

    async def trigger(self, names: list[str], *, force: bool, cause: str) -> dict[str, Any]:
        """Queue layers (folder names or ids) as one request; coalesces with what waits."""
        if self.phase == "stopping":
            raise Refused("the daemon is stopping", 503)
        ids = select(self.catalog, names)  # InputError for unknown names
        request_id = await self.queue.add(ids, force=force, cause=cause)
        self.blocked = None  # new intent: a refused run is worth another try
        self.bus.publish("trigger_received", {"layers": ids, "force": force, "trigger": cause,
                                              "request_id": request_id})
        await self._queue_changed()
        return {"id": request_id, "layers": ids, "requests": [request_id]}

    def cancel(self, build_id: str) -> bool:
        """True when the build was running and is being stopped."""
        if self.current is not None and self.current.cancel(build_id):
            self.bus.publish("build_cancel_requested", {"build_id": build_id})
            return True
        return False

    async def reload(self) -> None:
        """SIGHUP / POST /v1/reload: a bad config or catalog is refused, the old kept.
        Reloads run one at a time; each re-reads everything (registry, credentials,
        builders, upstreams, watchers)."""
        async with self._reload_lock:
            self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                config, catalog = await asyncio.to_thread(load, self.config_path)
                self._check_reloadable(config)
                check_platforms(config, catalog)
                AuthStore.load(config.auth_file)  # a broken auth file is refused too
            except (InputError, Refused) as exc:
                self.bus.publish("reload_refused", {"error": str(exc)}, "error")
                raise
            finally:
                self.notifier.notify("READY=1", await self._status_line())
            self.config, self.catalog = config, catalog
            self.webhooks.targets = list(config.notify)
            self.views.changed()
            if self.phase != "ready":
                return
            await self._stop_watchers()
            await self._connect(config)
            await self._pool.check_all()
            await self.upstreams.sync(config.upstreams, self._needed_upstreams(),
                                      start_polling=not self.once)
            self._start_watchers()
            self.bus.publish("reloaded", {"layers": len(catalog.layers)})
            await self.trigger(list(catalog.layers), force=False, cause="reload")

    def _check_reloadable(self, config: Config) -> None:
        """Settings a running daemon cannot change in place: refuse, keep the old."""
        for what, old, new in (("[control] socket", self.config.control_socket,
                                config.control_socket),
                               ("[state] dir", self.config.state_dir, config.state_dir)):
            if old != new:
                raise Refused(f"{what} changed ({old} -> {new}): a running daemon cannot "
                              "move it; restart the daemon to apply", 409)

    def _spawn_reload(self) -> None:
        async def reload_logged() -> None:
            with contextlib.suppress(InputError, Refused):
                await self.reload()

        self._own(f"reload-{time.monotonic_ns()}", reload_logged())

    # -- the run loop -----------------------------------------------------------

    async def _run_loop(self) -> None:
        while not self._stop.is_set():
            self.queue.wakeup.clear()
            waiting = await self.queue.waiting()
            if waiting and self.blocked is None:
                # Visible as a run from before the queue is taken: a status read in
                # between must not see "nothing queued, nothing running".
                run_id = f"run-{time.monotonic_ns() % 10**10:010d}"
                self.current_run = {"id": run_id, "started": time.time(), "layers": [],
                                    "requests": []}
                try:
                    await self._execute(await self.queue.take(), run_id)
                finally:
                    self.current_run = None
                continue
            if self.once and (not waiting or self.blocked is not None):
                self._stop.set()
                return
            await self.queue.wakeup.wait()

    async def _execute(self, entries: list[Entry], run_id: str) -> None:
        catalog, config = self.catalog, self.config
        unknown = [e for e in entries if e.layer not in catalog.layers]
        if unknown:  # a layer renamed away since it was queued: its requests end here
            await self.queue.finish(unknown, {e.layer: {"outcome": "unknown layer"}
                                              for e in unknown}, set(), lambda layer: [layer])
        entries = [e for e in entries if e.layer in catalog.layers]
        if not entries:
            return
        parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
        order = targets(catalog, [e.layer for e in entries])
        forced = frozenset(e.layer for e in entries if e.force)
        by_layer = {e.layer: e for e in entries}
        self.current_run = {"id": run_id, "started": time.time(), "layers": order,
                            "requests": sorted({r for e in entries for r in e.requests})}
        await self._queue_changed()

        def cause_of(layer: str) -> tuple[str | None, str | None]:
            for lid in (layer, *graph.ancestors(parents, layer)):
                if lid in by_layer:
                    entry = by_layer[lid]
                    cause = entry.cause if lid == layer else f"parent {lid}: {entry.cause}"
                    return cause, entry.request_id
            return "dependency of a triggered layer", None

        def superseded(lineage: list[str]) -> bool:
            # Draining: no new builds start. Otherwise: a newer change is queued.
            return self._stop.is_set() or self.queue.superseded(lineage)

        try:
            await asyncio.to_thread(enforce_policy, catalog, lambda line: self.bus.publish(
                "policy_warning", {"finding": line}, "warning"))
            contexts = await asyncio.to_thread(
                read_contexts, [catalog.layers[lid] for lid in order], self.engines)
        except InputError as exc:
            # Nothing is lost: the work waits, untouched, until the input is fixed
            # (any new trigger or file change tries again).
            await self.queue.give_back(entries)
            self.blocked = str(exc)
            self.current_run = None
            self.bus.publish("run_refused", {"error": str(exc),
                                             "waiting": [e.layer for e in entries]}, "error")
            await self._queue_changed()
            return
        self.current = Pipeline(
            config, catalog, self._pool, self.state,
            self.registry if config.registry is not None else None,
            self.upstreams.values, upstream_errors=self.upstreams.unresolved(),
            contexts=contexts, revision=lambda: catalog_revision(config.layers_dir),
            forced=forced, on_event=self._on_pipeline_event, cause_of=cause_of,
            superseded=superseded, resolver=self.registry, attestor=self.attestor,
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
        if self._stop.is_set():  # stopped by the shutdown: not failures, wait for next start
            deferred |= {lid for lid, r in report.results.items()
                         if r.outcome is Outcome.CANCELLED or
                         report.root_cause(lid) in report.by_outcome(Outcome.CANCELLED)}
        parents = {lid: layer.parent for lid, layer in self.catalog.layers.items()}
        in_run = set(order)
        outcomes: dict[str, dict[str, Any]] = {}
        for lid, result in report.results.items():
            outcome = "deferred" if lid in deferred else result.outcome.value
            outcomes[lid] = {"outcome": outcome,
                             "build_id": result.value.build_id if result.value else None}
            self._count(lid, result)
            self._note_failure(lid, result)
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
            self._exit_code = 1
        self.bus.publish("run_finished", {"run_id": run_id, "outcome": outcome,
                                          "counts": counts, "requests_done": done,
                                          "duration_s": round(time.time() - started, 3)})
        self.current_run = None
        await self._close_retired()
        await self._queue_changed()
        registry = self.config.registry
        if registry is not None and registry.keep and counts.get("built"):
            # Between runs, never beside one: a run may make an old key current
            # again while the plan to delete it is being carried out.
            await self._gc(registry.keep)

    async def _gc(self, keep: int) -> None:
        """Registry retention after a run that pushed something, before the next run."""
        await apply_retention(self.config, self.catalog, self.state, self.registry, keep,
                              lambda event, fields: self.bus.publish(
                                  event, fields, "warning" if "failed" in event else "info"))

    def _note_failure(self, lid: str, result: NodeResult[LayerResult]) -> None:
        """Consecutive failures per layer, for the scheduled-rebuild backoff."""
        if result.outcome in (Outcome.BUILT, Outcome.REUSED):
            self.retry_after.pop(lid, None)
        elif result.outcome is Outcome.FAILED:
            failures = self.retry_after.get(lid, (0, 0.0))[0] + 1
            layer = self.catalog.layers.get(lid)
            cap = layer.rebuild_every_s if layer and layer.rebuild_every_s else 3600.0
            backoff = Backoff(base_s=60.0, cap_s=cap)
            backoff.failures = failures - 1
            self.retry_after[lid] = (failures, time.time() + backoff.failure())

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
            for platform in fields.get("platforms") or ():
                self.metrics.platform_builds.labels(fields["layer"], platform,
                                                    fields.get("outcome", "unknown")).inc()
            if "duration_s" in fields:
                self.metrics.duration.labels(fields["layer"]).observe(fields["duration_s"])
        level = "error" if fields.get("outcome") == "failed" or \
            event == "state_write_failed" else "info"
        # A reuse is news to live views (the web page, run --once), not to the log.
        self.bus.publish(event, fields, "debug" if event == "layer_up_to_date" else level)
        self.notifier.notify(self._status_text(len(self._running_layers()), None))

    # -- views ----------------------------------------------------------------

    def _running_layers(self) -> list[str]:
        return [layer for layer, _ in self.current.running.values()] if self.current else []

    async def _queue_changed(self) -> None:
        self.views.changed()
        waiting = len(await self.queue.waiting())
        self.metrics.queue_depth.set(waiting)
        self.notifier.notify(self._status_text(len(self._running_layers()), waiting))

    async def _status_line(self) -> str:
        waiting = len(await self.queue.waiting()) if hasattr(self, "queue") else 0
        return self._status_text(len(self._running_layers()), waiting)

    def _status_text(self, building: int, waiting: int | None) -> str:
        running = self._running_layers()
        text = f"STATUS={self.phase}: {building} building"
        if running:
            text += f" ({', '.join(running[:3])}{'…' if len(running) > 3 else ''})"
        return text + (f", {waiting} queued" if waiting is not None else "")
