"""What the daemon talks to: the registry client, the credentials handed to
builders, the pool of engines and the attestor. Made from the configuration at
start and again on every reload; a run in progress keeps the ones it started
with, which are closed once it ends."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from orchestrator.build.attest import Attestor
from orchestrator.build.runs import make_attestor
from orchestrator.core.model import Config
from orchestrator.engines.factory import docker_config_dir, insecure_hosts, make_builders
from orchestrator.engines.pool import BuilderPool
from orchestrator.engines.runner import CommandRunner
from orchestrator.registry.aiohttp_transport import AiohttpTransport
from orchestrator.registry.auth import AuthStore
from orchestrator.registry.client import RegistryClient


class Connections:
    def __init__(self, runner: CommandRunner | None,
                 publish: Callable[[str, dict[str, Any], str], None],
                 on_request: Callable[[str, str, str], None]) -> None:
        self.runner = runner
        self.publish = publish
        self.on_request = on_request  # per registry request: a metric
        self.registry: RegistryClient | None = None
        self.pool: BuilderPool | None = None
        self.attestor: Attestor | None = None
        self._stack = contextlib.ExitStack()  # the credentials folder of the current ones
        self._retired: list[tuple[RegistryClient, contextlib.ExitStack]] = []

    def connect(self, config: Config) -> None:
        """New clients from ``config``; the old ones retire until :meth:`close_retired`."""
        if self.registry is not None:
            self._retired.append((self.registry, self._stack))
            self._stack = contextlib.ExitStack()
        docker_config = self._stack.enter_context(
            docker_config_dir(config.auth_file, config.state_dir / "tmp"))
        self.registry = RegistryClient(AuthStore.load(config.auth_file),
                                       transport=AiohttpTransport(),
                                       insecure=frozenset(insecure_hosts(config)),
                                       on_request=self.on_request)
        self.pool = BuilderPool(make_builders(config, self.runner, docker_config),
                                on_event=self.publish)
        self.attestor = make_attestor(config, self.registry)

    @property
    def client(self) -> RegistryClient:
        assert self.registry is not None, "connect() first"
        return self.registry

    @property
    def engines(self) -> BuilderPool:
        assert self.pool is not None, "connect() first"
        return self.pool

    async def close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for client, stack in retired:
            await client.close()
            stack.close()

    async def close(self) -> None:
        await self.close_retired()
        if self.registry is not None:
            await self.registry.close()
        self._stack.close()
