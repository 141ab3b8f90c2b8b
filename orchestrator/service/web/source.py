"""What the web page reads from a daemon, and the few things it may ask of it:
a narrow interface rather than the daemon itself, so the page can be served
(and tested) against anything that answers these."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.build.runs import STATE_DB
from orchestrator.build.state.readonly import History
from orchestrator.core.model import Catalog

if TYPE_CHECKING:
    import asyncio

    from orchestrator.service.daemon import Daemon

Subscription = contextlib.AbstractAsyncContextManager["asyncio.Queue[dict[str, Any] | None]"]


class WebSource(Protocol):
    def catalog(self) -> Catalog: ...

    def ready(self) -> bool: ...

    def current_run(self) -> dict[str, Any] | None:
        """The run in progress: its id, start and layers in order."""

    def last_results(self) -> dict[str, dict[str, Any]]:
        """Each layer's outcome in the last run that covered it (skips included)."""

    def history(self) -> History: ...

    def log_cap(self) -> int:
        """A build log's size cap (bytes, 0: none): past it the log's tail is rewritten."""

    def subscribe(self) -> Subscription:
        """The event bus: a queue of event dicts, None when the stream ends."""

    async def status(self) -> dict[str, Any]:
        """As ``GET /v1/status``."""

    async def layers(self) -> list[dict[str, Any]]:
        """As ``GET /v1/layers``."""

    async def record(self, layer: str) -> dict[str, Any] | None:
        """The image a layer stands on now: ref, digest, build key, parent and base digests."""

    async def builds(self, layer: str | None, limit: int) -> list[dict[str, Any]]: ...

    async def build(self, build_id: str) -> dict[str, Any] | None: ...

    async def explain(self, ref: str) -> list[dict[str, Any]]:
        """The provenance chain of an image, leaf first (as ``explain --json``)."""

    async def sbom_diff(self, old: str, new: str) -> str:
        """What changed in the SBOM from image ``old`` to image ``new``, one line each."""

    async def trigger(self, layers: list[str], *, force: bool, cause: str) -> dict[str, Any]: ...

    def cancel(self, build_id: str) -> bool: ...


class DaemonSource:
    """The running daemon as a :class:`WebSource`."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def catalog(self) -> Catalog:
        return self.daemon.loaded.catalog

    def ready(self) -> bool:
        return self.daemon.phase == "ready"

    def current_run(self) -> dict[str, Any] | None:
        return self.daemon.runs.current_run

    def last_results(self) -> dict[str, dict[str, Any]]:
        return self.daemon.runs.last_results

    def history(self) -> History:
        return History(self.daemon.config.state_dir / STATE_DB)

    def log_cap(self) -> int:
        return self.daemon.config.daemon.log_max_bytes

    def subscribe(self) -> Subscription:
        return self.daemon.bus.subscribe()

    async def status(self) -> dict[str, Any]:
        return await self.daemon.views.status()

    async def layers(self) -> list[dict[str, Any]]:
        return await self.daemon.views.layers()

    async def record(self, layer: str) -> dict[str, Any] | None:
        found = await self.daemon.state.records.get(layer)
        if found is None:
            return None
        return {"ref": found.ref, "digest": found.digest, "build_key": found.build_key,
                "built_at": found.built_at, "parent_digest": found.inputs.parent_digest,
                "bases": dict(found.inputs.bases),
                "platform_digests": dict(found.platform_digests)}

    async def builds(self, layer: str | None, limit: int) -> list[dict[str, Any]]:
        return await self.daemon.state.history.builds(layer, limit)

    async def build(self, build_id: str) -> dict[str, Any] | None:
        return await self.daemon.state.history.get(build_id)

    async def explain(self, ref: str) -> list[dict[str, Any]]:
        from orchestrator.registry import explain as papers

        chain = await papers.explain(self.daemon.connections.client, ref)
        return [level.as_json() for level in chain]

    async def sbom_diff(self, old: str, new: str) -> str:
        from orchestrator.core.sbom import diff, render_diff
        from orchestrator.registry import explain as papers

        documents: list[bytes] = []
        for text in (old, new):
            repo, digest = await papers.resolve(self.daemon.connections.client, text)
            choice = await papers.sbom_of(self.daemon.connections.client, repo, digest)
            if choice.document is None:
                raise papers.NotFound(f"{text}: {choice.problem or 'no SBOM is attached'}")
            documents.append(choice.document)
        return render_diff(diff(documents[0], documents[1])) or "no change"

    async def trigger(self, layers: list[str], *, force: bool, cause: str) -> dict[str, Any]:
        return await self.daemon.trigger(layers, force=force, cause=cause)

    def cancel(self, build_id: str) -> bool:
        return self.daemon.cancel(build_id)


@contextlib.asynccontextmanager
async def no_events() -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
    """A subscription that never says anything (for sources without a bus)."""
    import asyncio

    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    yield queue
