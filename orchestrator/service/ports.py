"""What the daemon's parts see of each other: small interfaces, so that the API,
the views and the web page depend on what they read, not on the daemon object
(and nothing imports service/daemon.py but the command line that starts it)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import Catalog, Config


class Refused(OrchestratorError):
    """A request the daemon will not take now (stopping, unknown build…)."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class Control(Protocol):
    """The control socket server, started before READY and stopped last."""

    where: str

    async def start(self, inherited: list[socket.socket]) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Loaded:
    """The configuration and catalog in force. Parts hold this one object; a
    reload replaces its fields, so every part sees the new ones at once."""

    config_path: Path
    config: Config
    catalog: Catalog

    @property
    def engines(self) -> tuple[str, ...]:
        """The kinds of engine the configured builders are (they decide which
        ignore file a context is read with)."""
        return tuple(sorted({spec.backend for spec in self.config.builders}))
