"""Starting and stopping the web page with the daemon, as part of its control
server: the daemon itself needs no change, and the page's modules are loaded
only when ``[web] listen`` is set."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.service.daemon import Daemon
    from orchestrator.service.ports import Control
    from orchestrator.service.web.server import WebServer


class ControlWithWeb:
    """The control socket and, when ``[web] listen`` is set, the web page, as one
    :class:`Control`: started together before READY, stopped together (the page
    first, so no page outlives the daemon's state)."""

    def __init__(self, control: Control, daemon: Daemon) -> None:
        self.control = control
        self.daemon = daemon
        self.web: WebServer | None = None
        self.where = control.where

    async def start(self, inherited: list[socket.socket]) -> None:
        await self.control.start(inherited)
        if self.daemon.config.web.listen is not None:
            from orchestrator.service.web.server import WebServer
            from orchestrator.service.web.source import DaemonSource

            self.web = WebServer(DaemonSource(self.daemon), self.daemon.config.web)
            await self.web.start()
        self.where = self.control.where + (f", web {self.web.where}" if self.web else "")

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
        await self.control.stop()


def with_web(control_factory: Callable[[Daemon], Control]) -> Callable[[Daemon], Control]:
    """Wrap the daemon's control factory so the web page starts and stops with it."""
    def make(daemon: Daemon) -> Control:
        return ControlWithWeb(control_factory(daemon), daemon)

    return make
