"""A stand-in for the daemon behind the web page: a catalog of N layers, the
daemon's own event bus (so records carry the fields and the ISO-8601 stamps the
daemon's do) the test publishes on, recorded triggers. For unit tests and the
500-layer benchmark (the page's cost, without building 500 images)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from orchestrator.build.state.readonly import History
from orchestrator.core.model import Catalog, Layer
from orchestrator.service.events import EventBus


def catalog_of(n: int, fanout: int = 4) -> Catalog:
    """``n`` layers: a root on upstream:seed, each next layer under an earlier one."""
    def name(i: int) -> str:
        return "base" if i == 0 else f"layer-{i:03d}"

    layers: dict[str, Layer] = {}
    for i in range(n):
        lid = name(i)
        layers[lid] = Layer(id=lid, name=lid, folder=Path("/nonexistent") / lid,
                            dockerfile=Path("/nonexistent") / lid / "Dockerfile", image=lid,
                            parent=None if i == 0 else name((i - 1) // fanout),
                            upstream="seed" if i == 0 else None,
                            tags=("1.0",) if i % 3 == 0 else ())
    return Catalog(layers=layers, upstreams={})


class FakeSource:
    def __init__(self, catalog: Catalog, state_db: Path) -> None:
        self._catalog = catalog
        self.state_db = state_db
        self.bus = EventBus()
        self.triggered: list[tuple[list[str], bool, str]] = []
        self.cancelled: list[str] = []
        self.builds_by_id: dict[str, dict[str, Any]] = {}
        self.states: dict[str, str] = {lid: "up_to_date" for lid in catalog.layers}
        self.run: dict[str, Any] | None = None

    def publish(self, event: str, **fields: Any) -> None:
        self.bus.publish(event, fields)

    def close(self) -> None:
        self.bus.close()

    # -- WebSource ----------------------------------------------------------------

    def catalog(self) -> Catalog:
        return self._catalog

    def ready(self) -> bool:
        return True

    def current_run(self) -> dict[str, Any] | None:
        return self.run

    def last_results(self) -> dict[str, dict[str, Any]]:
        return {}

    def history(self) -> History:
        return History(self.state_db)

    def log_cap(self) -> int:
        return 0

    def subscribe(self) -> contextlib.AbstractAsyncContextManager[
            asyncio.Queue[dict[str, Any] | None]]:
        return self.bus.subscribe()

    async def status(self) -> dict[str, Any]:
        return {"phase": "ready", "pid": 1, "uptime_s": 1.0,
                "backend": {"name": "local", "error": None},
                "builders": [{"name": "local", "state": "up", "running": 0, "slots": 2,
                              "builds": 3, "error": None}],
                "queue": [], "blocked": None, "run": self.run, "running": [],
                "upstreams": {"seed": {"tag": "1", "digest": "sha256:" + "7" * 64,
                                       "last_check": time.time() - 5,
                                       "next_check": time.time() + 60, "error": None}},
                "retrying": {}, "tasks": 1}

    async def layers(self) -> list[dict[str, Any]]:
        return [{"layer": lid, "image": layer.image, "parent": layer.parent,
                 "upstream": layer.upstream, "tags": list(layer.tags), "build_key": "k",
                 "digest": "sha256:" + "1" * 64, "stale": False, "why": None,
                 "state": self.states[lid]} for lid, layer in self._catalog.layers.items()]

    async def record(self, layer: str) -> dict[str, Any] | None:
        return {"ref": f"reg.example/ns/{layer}@sha256:{'1' * 64}", "digest": "sha256:" + "1" * 64,
                "build_key": "k" * 64, "built_at": 1700000000.0,
                "parent_digest": "sha256:" + "0" * 64, "bases": {}, "platform_digests": {}}

    async def builds(self, layer: str | None, limit: int) -> list[dict[str, Any]]:
        rows = [b for b in self.builds_by_id.values() if layer in (None, b["layer"])]
        return sorted(rows, key=lambda b: -b["started_at"])[:limit]

    async def build(self, build_id: str) -> dict[str, Any] | None:
        return self.builds_by_id.get(build_id)

    async def explain(self, ref: str) -> list[dict[str, Any]]:
        return [{"image": ref, "layer": "x", "provenance": True, "cause": "file changed: x",
                 "reason": None, "build_id": "b1", "finished": "2025-01-01T00:00:00",
                 "builder": "buildah 1.28", "signature": "unsigned", "upstreams": {},
                 "sbom": {"os": "Debian 12", "components": 3, "ecosystems": {"deb": 3},
                          "python": [], "flask": []}}]

    async def sbom_diff(self, old: str, new: str) -> str:
        return "~ deb libc6 1 -> 2"

    async def trigger(self, layers: list[str], *, force: bool, cause: str) -> dict[str, Any]:
        self.triggered.append((layers, force, cause))
        return {"id": "req-1", "layers": layers, "requests": ["req-1"]}

    def cancel(self, build_id: str) -> bool:
        self.cancelled.append(build_id)
        return True


class ServedInThread:
    """A WebServer on its own event loop in a thread (for sync browser tests)."""

    def __init__(self, source: FakeSource) -> None:
        import threading

        from orchestrator.core.model import WebConfig
        from orchestrator.service.web.server import WebServer

        self.source = source
        self.loop = asyncio.new_event_loop()
        self.server = WebServer(source, WebConfig(listen=("127.0.0.1", 0)))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        self.url = self.server.where

    async def _start(self) -> None:
        await self.server.start()
        await asyncio.wait_for(self.server.board.seeded.wait(), 30)
        await self.server.picture()  # laid out once, as a running daemon would have

    def publish(self, event: str, **fields: Any) -> None:
        self.loop.call_soon_threadsafe(lambda: self.source.publish(event, **fields))

    def stop(self) -> None:
        async def stop() -> None:
            self.source.close()
            await self.server.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
