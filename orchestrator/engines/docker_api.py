"""The Docker engine's API through aiodocker, for what it does well: ping and
version, image inspection and removal. The build itself stays with the Docker
CLI: Docker 20.10's API cannot run a BuildKit session without it. Loaded only
when a Docker engine is used.

Both must reach the same engine the same way, so the address and TLS settings
follow the Docker CLI's rules: ``[build.buildkit] docker_host`` (or a builder's
``address``), else ``DOCKER_HOST``, else ``unix:///var/run/docker.sock``; TLS
when ``DOCKER_TLS_VERIFY`` (verify the engine) or ``DOCKER_TLS`` is set to
anything non-empty, with ``ca.pem``, ``cert.pem`` and ``key.pem`` from
``DOCKER_CERT_PATH`` (default ``~/.docker``)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import BackendError
from orchestrator.engines.runner import CAPTURE_TIMEOUT_S, PING_TIMEOUT_S

DEFAULT_HOST = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Endpoint:
    url: str                 # as aiodocker takes it (https:// when TLS is on)
    shown: str               # as the user wrote it, for messages
    tls: ssl.SSLContext | None = None


def endpoint(configured: str | None, env: Mapping[str, str] | None = None) -> Endpoint:
    """Where the engine is, read as the Docker CLI reads it (see the module doc)."""
    env = os.environ if env is None else env
    host = configured or env.get("DOCKER_HOST") or DEFAULT_HOST
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    if not host.startswith(("tcp://", "http://", "https://")) or not (
            verify or env.get("DOCKER_TLS") or host.startswith("https://")):
        return Endpoint(host, host)
    certs = Path(env.get("DOCKER_CERT_PATH") or Path(env.get("DOCKER_CONFIG")
                                                     or Path.home() / ".docker"))
    try:
        context = ssl.create_default_context(
            cafile=str(certs / "ca.pem") if verify else None)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if (certs / "cert.pem").exists() or verify:
            context.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    except (OSError, ssl.SSLError) as exc:
        raise BackendError(f"the Docker engine at {host}: TLS settings from "
                           f"{certs} (DOCKER_CERT_PATH): {exc}") from exc
    url = "https://" + host.split("://", 1)[1]
    return Endpoint(url, host, context)


class DockerApi:
    def __init__(self, host: str | None) -> None:
        self.configured = host

    @property
    def host(self) -> str:
        return self.configured or os.environ.get("DOCKER_HOST") or DEFAULT_HOST

    async def _call(self, what: str, fn: Any, timeout_s: float = CAPTURE_TIMEOUT_S) -> Any:
        import aiodocker

        # Read at each call, as the CLI reads its environment at each build.
        where = endpoint(self.configured)
        try:
            docker = aiodocker.Docker(url=where.url, ssl_context=where.tls)
        except ValueError as exc:  # an address aiodocker cannot take
            raise BackendError(f"the Docker engine at {where.shown}: {exc}") from exc
        try:
            # An engine that accepts and never answers must not hold a lease.
            return await asyncio.wait_for(fn(docker), timeout_s)
        except TimeoutError:
            raise BackendError(f"the Docker engine at {self.host}: {what}: no answer within "
                               f"{timeout_s:g} s") from None
        except (aiodocker.DockerError, OSError) as exc:
            raise BackendError(f"the Docker engine at {self.host}: {what}: {exc}") from exc
        finally:
            await docker.close()

    async def version(self) -> str:
        info = await self._call("version", lambda d: d.version(), PING_TIMEOUT_S)
        return str(info.get("Version") or "unknown")

    async def inspect(self, ref: str) -> dict[str, Any] | None:
        import aiodocker

        async def inspect(docker: Any) -> dict[str, Any] | None:
            try:
                return dict(await docker.images.inspect(ref))
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return None
                raise

        found: dict[str, Any] | None = await self._call("image inspect", inspect)
        return found

    async def images(self, label: str) -> list[dict[str, Any]]:
        found = await self._call("image list",
                                 lambda d: d.images.list(filters={"label": [label]}))
        return list(found)

    async def remove_image(self, image_id: str) -> bool:
        """Remove one image (all its names); False when it is in use or gone."""
        import aiodocker

        async def remove(docker: Any) -> bool:
            try:
                await docker.images.delete(image_id, force=True, noprune=False)
            except aiodocker.DockerError as exc:
                if exc.status in (404, 409):  # gone, or a container uses it
                    return False
                raise
            return True

        return bool(await self._call("image removal", remove))
