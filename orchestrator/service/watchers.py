"""The daemon's watchers: saved files under the layers folder (and contexts kept
elsewhere), the schedule (``rebuild.every``, retries that are due) and hourly
housekeeping. Each runs as a task the daemon owns; none ever ends on an
ordinary fault (a broken ``layer.toml`` is reported and the last good catalog
stays)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from orchestrator.build.logfiles import prune_logs
from orchestrator.build.runs import load
from orchestrator.build.scope import upstreams_used
from orchestrator.build.state import AsyncStateStore
from orchestrator.catalog.context import ignore_file, load_ignore
from orchestrator.catalog.layers import LAYER_FILE
from orchestrator.core.dockerignore import DockerIgnore
from orchestrator.core.errors import InputError
from orchestrator.service.events import EventBus
from orchestrator.service.ports import Loaded
from orchestrator.service.runloop import RunLoop
from orchestrator.service.triggers import Triggers
from orchestrator.service.upstreams import UpstreamWatch
from orchestrator.service.watch import (
    IGNORE_FILES,
    FolderRules,
    LayerChange,
    LayerFilter,
    watch_layers,
)

log = structlog.get_logger("orchestrator.daemon")
REQUEST_RETENTION_S = 7 * 86400.0
HOUSEKEEPING_S = 3600.0

Own = Callable[[str, Coroutine[Any, Any, Any]], None]


class Watchers:
    def __init__(self, loaded: Loaded, triggers: Triggers, runs: RunLoop,
                 upstreams: UpstreamWatch, state: AsyncStateStore, bus: EventBus, *,
                 own: Own, on_catalog: Callable[[], None], once: bool) -> None:
        self.loaded = loaded
        self.triggers = triggers
        self.runs = runs
        self.upstreams = upstreams
        self.state = state
        self.bus = bus
        self.own = own  # the daemon owns every task (and reaps its errors)
        self.on_catalog = on_catalog  # a new catalog is in force
        self.once = once
        self.stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._filter: LayerFilter | None = None

    def start(self) -> None:
        if self.once:
            return
        self.stop = asyncio.Event()
        config = self.loaded.config
        self._filter = LayerFilter(config.layers_dir, self._folder_rules,
                                   self._outside_contexts())
        tasks = [("watch-files", watch_layers(config.layers_dir, self._on_files, self.stop,
                                               config.daemon.debounce_s, self._filter)),
                 ("schedule", self._schedule_loop()),
                 ("housekeeping", self._housekeeping_loop())]
        for name, coro in tasks:
            self.own(name, self._kept(name, coro))

    async def _kept(self, name: str, coro: Awaitable[Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[name] = task
        try:
            await coro
        finally:
            if self._tasks.get(name) is task:
                del self._tasks[name]

    async def stop_all(self) -> None:
        self.stop.set()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def restart(self) -> None:
        await self.stop_all()
        self.start()

    # -- files ---------------------------------------------------------------

    def _folder_rules(self, folder: str) -> FolderRules:
        """What matters in a layer folder: never raises (a broken ignore file
        makes every change relevant until it is fixed; the run reports it)."""
        metadata = {LAYER_FILE, "Dockerfile", *IGNORE_FILES}
        config, catalog, engines = self.loaded.config, self.loaded.catalog, self.loaded.engines
        layers = [layer for layer in catalog.layers.values() if layer.name == folder]
        try:
            if not layers:
                return FolderRules(load_ignore(config.layers_dir / folder, ".dockerignore"),
                                   frozenset(metadata))
            layer = layers[0]
            with contextlib.suppress(ValueError):
                metadata.add(layer.dockerfile.relative_to(layer.folder).as_posix())
            if layer.context != layer.folder:  # the context lives elsewhere
                return FolderRules(DockerIgnore([]), frozenset(metadata))
            name = ignore_file(layer, engines)
            return FolderRules(load_ignore(layer.context, name, engines[0]),
                               frozenset(metadata))
        except InputError:
            return FolderRules(DockerIgnore([]), frozenset(metadata))

    def _outside_contexts(self) -> dict[Path, tuple[str, DockerIgnore]]:
        """Contexts that live outside the layers folder, watched too (with their
        ignore rules: a change there rebuilds the layer like one in its folder)."""
        out: dict[Path, tuple[str, DockerIgnore]] = {}
        engines = self.loaded.engines
        for layer in self.loaded.catalog.layers.values():
            if layer.context == layer.folder or layer.context in out:
                continue
            try:
                ignore = load_ignore(layer.context, ignore_file(layer, engines), engines[0])
            except InputError:
                ignore = DockerIgnore([])
            out[layer.context] = (layer.name, ignore)
        return out

    async def _on_files(self, change: LayerChange) -> None:
        """A burst of saves. Never raises: the watcher must outlive any bad edit."""
        try:
            broken: set[str] = set()
            if change.catalog_changed:
                try:
                    await self.reload_catalog()
                except InputError as exc:
                    # The old catalog stays; the other folders' edits still count.
                    self.bus.publish("catalog_refused", {"error": str(exc)}, "error")
                    broken = set(change.catalog_folders)
            for folder, path in change.folders.items():
                if folder in broken:
                    continue
                ids = [lid for lid, layer in self.loaded.catalog.layers.items()
                       if layer.name == folder]
                if ids:
                    await self.triggers.trigger(ids, force=False, cause=f"file changed: {path}")
        except Exception as exc:
            log.error("file_change_failed", error=repr(exc), exc_info=exc)

    async def reload_catalog(self) -> None:
        """An edited ``layer.toml``: the catalog again (a broken one raises, the old stays)."""
        _, catalog = await asyncio.to_thread(load, self.loaded.config_path)
        before = set(self._outside_contexts())
        self.loaded.catalog = catalog
        if set(self._outside_contexts()) != before and not self.once:
            # New folders to watch: restart the watcher from its own task (this
            # runs inside the watcher's callback, which a restart cancels).
            self.own(f"rewatch-{time.monotonic_ns()}", self.restart())
        self.on_catalog()
        if self._filter is not None:
            self._filter.forget()
        self.bus.publish("catalog_reloaded", {"layers": len(catalog.layers)})
        # A layer.toml may now name an upstream nobody polled yet.
        await self.upstreams.sync(self.loaded.config.upstreams, self.needed_upstreams(),
                                  start_polling=not self.once)

    def needed_upstreams(self) -> set[str]:
        return set().union(*(upstreams_used(layer)
                             for layer in self.loaded.catalog.layers.values()))

    # -- time ----------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while not self.stop.is_set():
            wait = self.loaded.config.daemon.schedule_check_s
            retry = self.runs.failures.next_retry()
            if retry is not None:  # a failed publish is tried again when it is due
                wait = max(0.05, min(wait, retry - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)
            if self.stop.is_set():
                return
            try:
                await self.triggers.due()
            except Exception as exc:
                log.error("schedule_check_failed", error=repr(exc), exc_info=exc)

    async def _housekeeping_loop(self) -> None:
        while not self.stop.is_set():
            try:
                removed = await asyncio.to_thread(self._prune_logs)
                pruned = await self.state.work.prune_requests(time.time() - REQUEST_RETENTION_S)
                if removed or pruned:
                    self.bus.publish("logs_pruned", {"removed": removed,
                                                     "requests_removed": pruned})
            except Exception as exc:
                log.error("housekeeping_failed", error=repr(exc), exc_info=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), HOUSEKEEPING_S)

    def _prune_logs(self) -> int:
        config = self.loaded.config
        return prune_logs(config.state_dir / "logs", time.time() - config.daemon.log_retention_s,
                          set(self.runs.running_builds().values()))
