"""The Docker engine's API through aiodocker, for what it does well: ping and
version, image inspection and removal. The build itself stays with the Docker
CLI: Docker 20.10's API cannot run a BuildKit session without it. Loaded only
when a Docker engine is used."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.core.errors import BackendError
from orchestrator.engines.runner import CAPTURE_TIMEOUT_S, PING_TIMEOUT_S


class DockerApi:
    def __init__(self, host: str | None) -> None:
        self.host = host or "unix:///var/run/docker.sock"

    async def _call(self, what: str, fn: Any, timeout_s: float = CAPTURE_TIMEOUT_S) -> Any:
        import aiodocker

        docker = aiodocker.Docker(url=self.host)
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
