"""``systemctl reload`` / SIGHUP / ``POST /v1/reload``: read the configuration and
the catalog again. A bad one is refused and the old kept; a good one replaces
the registry client, credentials, builders, upstream pollers and watchers, and
everything is planned again. One reload at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from orchestrator.build.runs import check_platforms, load
from orchestrator.core.errors import InputError
from orchestrator.core.model import Config
from orchestrator.registry.auth import AuthStore
from orchestrator.service.connections import Connections
from orchestrator.service.events import EventBus
from orchestrator.service.ports import Loaded, Refused
from orchestrator.service.sdnotify import Notifier
from orchestrator.service.triggers import Triggers
from orchestrator.service.upstreams import UpstreamWatch
from orchestrator.service.watchers import Watchers


class Reloader:
    def __init__(self, loaded: Loaded, connections: Connections, upstreams: UpstreamWatch,
                 watchers: Watchers, triggers: Triggers, bus: EventBus, notifier: Notifier,
                 *, phase: Callable[[], str], status_line: Callable[[], Awaitable[str]],
                 on_config: Callable[[Config], Awaitable[None]], once: bool) -> None:
        self.loaded = loaded
        self.connections = connections
        self.upstreams = upstreams
        self.watchers = watchers
        self.triggers = triggers
        self.bus = bus
        self.notifier = notifier
        self.phase = phase
        self.status_line = status_line
        self.on_config = on_config  # parts that keep settings of their own (webhooks, views)
        self.once = once
        self._lock = asyncio.Lock()

    async def reload(self) -> None:
        async with self._lock:
            self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                config, catalog = await asyncio.to_thread(load, self.loaded.config_path)
                self._check_reloadable(config)
                check_platforms(config, catalog)
                AuthStore.load(config.auth_file)  # a broken auth file is refused too
            except (InputError, Refused) as exc:
                self.bus.publish("reload_refused", {"error": str(exc)}, "error")
                raise
            finally:
                self.notifier.notify("READY=1", await self.status_line())
            self.loaded.config, self.loaded.catalog = config, catalog
            await self.on_config(config)
            if self.phase() != "ready":
                return
            await self.watchers.stop_all()
            self.connections.connect(config)
            await self.connections.engines.check_all()
            await self.upstreams.sync(config.upstreams, self.watchers.needed_upstreams(),
                                      start_polling=not self.once)
            self.watchers.start()
            self.bus.publish("reloaded", {"layers": len(catalog.layers)})
            await self.triggers.trigger(list(catalog.layers), force=False, cause="reload")

    def _check_reloadable(self, config: Config) -> None:
        """Settings a running daemon cannot change in place: refuse, keep the old."""
        old = self.loaded.config
        for what, before, after in (("[control] socket", old.control_socket,
                                     config.control_socket),
                                    ("[state] dir", old.state_dir, config.state_dir)):
            if before != after:
                raise Refused(f"{what} changed ({before} -> {after}): a running daemon cannot "
                              "move it; restart the daemon to apply", 409)
