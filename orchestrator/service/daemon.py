"""``orchestrator run``: the daemon as wiring of parts, and their lifetimes.

Startup -> main loop -> shutdown with a bounded drain. Signal handlers only
set flags. The parts, each in its own module:

- ``connections``: the registry client, credentials and builder pool;
- ``runloop``: takes the queue's work and runs it over the hierarchy;
- ``triggers``: what queues work (requests, files, upstreams, the schedule);
- ``watchers``: file, schedule and housekeeping tasks;
- ``reload``: reading the configuration and catalog again;
- ``durability``: intents held while the state refuses writes (a full disk);
- ``views`` and ``api``: what the control socket shows and takes.

Every task is owned by ``self._tasks`` and reaped; no ordinary fault (an
unreadable file, an unreachable registry, a broken ``layer.toml``, a full
disk) ends the daemon: it is reported and the last good state kept. All
durable facts live in SQLite, so a kill -9 loses nothing: the next start
marks interrupted builds, clears what they left behind, puts their layers
back in the queue and reuses every image already pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from orchestrator.build.lock import StateLock
from orchestrator.build.runs import (
    check_platforms,
    load,
)
from orchestrator.build.state import AsyncStateStore
from orchestrator.core.model import Config, UpstreamSpec
from orchestrator.engines.runner import CommandRunner
from orchestrator.registry.upstream import resolve
from orchestrator.service.connections import Connections
from orchestrator.service.durability import StateHealth
from orchestrator.service.events import EventBus
from orchestrator.service.metrics import Metrics
from orchestrator.service.packagewatch import PackageWatch
from orchestrator.service.ports import Control, Loaded
from orchestrator.service.queue import WorkQueue
from orchestrator.service.reload import Reloader
from orchestrator.service.runloop import RunLoop
from orchestrator.service.sdnotify import (
    Notifier,
    forget_activation_env,
    listen_sockets,
    watchdog_interval,
)
from orchestrator.service.startup import open_state, recover
from orchestrator.service.status_line import StatusLine
from orchestrator.service.triggers import Triggers
from orchestrator.service.upstreams import UpstreamWatch
from orchestrator.service.views import Views
from orchestrator.service.watchers import Watchers
from orchestrator.service.webhooks import Webhooks

log = structlog.get_logger("orchestrator.daemon")
BACKEND_RETRY_S = (1, 2, 5, 10, 30)


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
        self.connections = Connections(runner, self.bus.publish, self.metrics.registry_request)
        self.views = Views(self)
        self._phase = "starting"
        self.backend_error: str | None = None
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.status_line = StatusLine(self.notifier, self.metrics, lambda: self._phase)
        self._exit_code = 0
        self._api: Control | None = None
        self._lock = StateLock(Path("."))
        # Made at startup, once the configuration is read.
        self.loaded: Loaded
        self.state: AsyncStateStore
        self.health: StateHealth
        self.queue: WorkQueue
        self.upstreams: UpstreamWatch
        self.packages: PackageWatch
        self.webhooks: Webhooks
        self.runs: RunLoop
        self.triggers: Triggers
        self.watchers: Watchers
        self.reloader: Reloader

    # -- what the API and the views read -------------------------------------

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def config(self) -> Config:
        return self.loaded.config

    async def trigger(self, names: list[str], *, force: bool, cause: str) -> dict[str, Any]:
        return await self.triggers.trigger(names, force=force, cause=cause)

    def cancel(self, build_id: str) -> bool:
        return self.runs.cancel(build_id)

    async def reload(self) -> None:
        await self.reloader.reload()

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        config, catalog = load(self.config_path)  # bad input: exit 2 at start
        check_platforms(config, catalog)
        self.loaded = Loaded(self.config_path, config, catalog)
        self._lock = StateLock(config.state_dir).acquire("daemon")
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
        return max(self._exit_code, self.runs.exit_code if hasattr(self, "runs") else 0)

    def request_stop(self) -> None:
        """Signal handler: only sets the flag; shutdown happens in the main flow."""
        self._stop.set()

    async def _startup(self) -> None:
        config = self.loaded.config
        self._own("watchdog", self._watchdog())  # ticks while the state dir is full too
        self._own("status", self.status_line.run())
        opened = await open_state(config, self.bus.publish, self.notifier, self._stop)
        if opened is None:
            return
        self.state, removed = opened
        self._wire()
        self._own("state-health", self.health.run(self._stop))
        self.connections.connect(config)
        await recover(self.state, self.connections.engines, self.queue, self.health,
                      self.loaded.catalog, self.bus.publish, removed)
        self._api = self.control_factory(self)
        await self._api.start(self.listen)
        await self._wait_for_backend()
        if self._stop.is_set():
            return
        await self.upstreams.sync(config.upstreams, self.watchers.needed_upstreams(),
                                  start_polling=not self.once)
        await self.queue.add(list(self.loaded.catalog.layers), force=False,
                             cause="startup reconcile")
        self.upstreams.live = True
        self._phase = "ready"
        await self.packages.start(polling=not self.once)
        self.notifier.notify("READY=1", await self.status_line.text())
        self.bus.publish("daemon_ready", {"layers": len(self.loaded.catalog.layers),
                                          "socket": self._api.where,
                                          "builders": [m.name for m in
                                                       self.connections.engines.members]})
        self._own("runner", self.runs.run())
        self.watchers.start()

    def _wire(self) -> None:
        """The parts, over the state just opened."""
        loaded, bus = self.loaded, self.bus
        self.health = StateHealth(self.state, bus.publish, self._on_state_writable)
        self.queue = WorkQueue(self.state, self.health)
        self.upstreams = UpstreamWatch(self.state, self._resolve, bus.publish,
                                       self._on_upstream_change, self._count_check,
                                       health=self.health)
        self.webhooks = Webhooks(self.state, loaded.config.notify, self.metrics)
        bus.listeners.append(self.webhooks.notice)
        self.webhooks.start(deliver=not self.once)  # lives until _shutdown, across reloads
        self.runs = RunLoop(loaded, self.state, self.queue, self.connections, self.upstreams,
                            bus, self.metrics, self.health, self._stop, once=self.once,
                            on_change=self._queue_changed)
        self.triggers = Triggers(loaded, self.queue, self.state, self.runs, bus,
                                 phase=lambda: self._phase, on_change=self._queue_changed)
        self.watchers = Watchers(loaded, self.triggers, self.runs, self.upstreams, self.state,
                                 bus, own=self._own, on_catalog=self.views.changed,
                                 once=self.once)
        self.reloader = Reloader(loaded, self.connections, self.upstreams, self.watchers,
                                 self.triggers, bus, self.notifier, phase=lambda: self._phase,
                                 status_line=self.status_line.text, on_config=self._on_config,
                                 once=self.once)
        self.status_line.queue, self.status_line.health = self.queue, self.health
        self.status_line.running = self.runs.running_layers
        self._wire_packages()

    def _wire_packages(self) -> None:
        """Package fixes: the watch triggers layers, the runs key with its view."""
        self.packages = PackageWatch(
            self.loaded, self.state, self.bus, self.metrics,
            trigger=lambda layers, cause: self.triggers.trigger(layers, force=False,
                                                                cause=cause),
            busy=lambda: set(self.runs.running_layers()), phase=lambda: self._phase,
            on_change=self._queue_changed, attestor=lambda: self.connections.attestor)
        self.bus.listeners.append(self.packages.notice)
        self.runs.package_fixes = self.packages.fixes

    async def _on_config(self, config: Config) -> None:
        await self.webhooks.configure(config.notify)  # never waits on a receiver
        if self._phase == "ready":
            await self.packages.configure()
        self.views.changed()

    async def _wait_for_backend(self) -> None:
        """READY only once a builder answers; until then say why, and retry."""
        attempt = 0
        pool = self.connections.engines
        while not self._stop.is_set():
            if await pool.check_all():
                self.backend_error = None
                return
            self.backend_error = "no builder answers: " + pool.why_waiting()
            delay = BACKEND_RETRY_S[min(attempt, len(BACKEND_RETRY_S) - 1)]
            attempt += 1
            self.bus.publish("backend_unavailable", {"error": self.backend_error,
                                                     "retry_in_s": delay}, "error")
            self.notifier.notify(f"STATUS=waiting for a builder: {self.backend_error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _shutdown(self) -> None:
        self._phase = "stopping"
        drain_s = self.loaded.config.daemon.drain_s
        self.notifier.notify("STOPPING=1", "STATUS=stopping: draining running builds")
        self.bus.publish("daemon_stopping", {"drain_timeout_s": drain_s})
        wired = hasattr(self, "runs")
        if wired:
            self.watchers.stop.set()
            self.queue.wakeup.set()
        runner = self._tasks.pop("runner", None)
        if runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(runner), drain_s)
            except TimeoutError:
                self.bus.publish("drain_timeout", {"running": self.runs.running_layers()},
                                 "warning")
                runner.cancel()  # stops builders' process groups; builds recorded cancelled
                await asyncio.gather(runner, return_exceptions=True)
            except Exception as exc:  # already logged by the loop; do not mask shutdown
                log.error("runner_failed", error=str(exc))
        if wired:
            await self.watchers.stop_all()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if wired:
            await self.upstreams.close()
            await self.packages.close()
            # Only now, with the drain over and nothing left to publish: the events
            # of builds that finished during the drain are recorded, then sending
            # stops at once (what is left goes out after the next start).
            await self.webhooks.close()
        # Event streams end before the server stops: the server waits for open
        # responses, and a follower would otherwise hold the stop for minutes.
        self.bus.close()
        if self._api is not None:
            await self._api.stop()
        if hasattr(self, "state"):
            with contextlib.suppress(Exception):
                await self.state.work.requeue_taken()  # not served: waits for the next start
            await self.state.close()
        await self.connections.close()
        self.bus.publish("daemon_stopped", {})
        self.notifier.close()

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

    def _spawn_reload(self) -> None:
        async def reload_logged() -> None:
            with contextlib.suppress(Exception):  # refused: reported by the reloader
                await self.reload()

        self._own(f"reload-{time.monotonic_ns()}", reload_logged())

    async def _watchdog(self) -> None:
        if self.watchdog_s is None:
            return
        # From the event loop itself: a wedged loop stops the pings and systemd
        # restarts us, which is the point.
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s)

    # -- reactions ---------------------------------------------------------------

    async def _resolve(self, spec: UpstreamSpec) -> Any:
        return await resolve(spec, self.connections.client)

    def _count_check(self, upstream: str, result: str) -> None:
        self.metrics.upstream_checks.labels(upstream, result).inc()

    async def _on_upstream_change(self, upstream: str, cause: str) -> None:
        await self.triggers.upstream_changed(upstream, cause)

    def _on_state_writable(self, writable: bool) -> None:
        self.metrics.state_writable.set(1 if writable else 0)
        self._queue_changed()

    def _queue_changed(self) -> None:
        self.views.changed()
        self.status_line.changed()
