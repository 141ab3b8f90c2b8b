"""A webhook receiver on 127.0.0.1 for tests: a real aiohttp server in its own
thread and event loop, so it serves the daemon's subprocess and the unit
tests' event loop alike, and a handler that hangs holds up nobody but its caller.

Paths choose the answer: ``/hang…`` never answers (until the receiver closes),
``/redirect…`` answers 302 to ``/elsewhere``, any other path answers 204 after
``fail[path]`` answers of 500."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    def signed_with(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("X-Orchestrator-Signature", ""), expected)

    @property
    def delivery(self) -> str:
        return self.headers["X-Orchestrator-Delivery"]


class HookReceiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.fail: dict[str, int] = {}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="hook-receiver")
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    def __enter__(self) -> HookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def posts(self, path: str) -> list[Received]:
        return [r for r in list(self.requests) if r.method == "POST" and r.path == path]

    def to(self, path: str) -> list[Received]:
        """Every request to ``path``, whatever its method."""
        return [r for r in list(self.requests) if r.path == path]

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        address: Any = self._runner.addresses[0]
        self.port = int(address[1])

    async def _stop(self) -> None:
        assert self._release is not None and self._runner is not None
        self._release.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        self.requests.append(Received(request.method, path, dict(request.headers), body,
                                      time.monotonic()))
        if path.startswith("/hang"):
            assert self._release is not None
            await self._release.wait()
            return web.Response(status=204)
        if path.startswith("/redirect"):
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        if self.fail.get(path, 0) > 0:
            self.fail[path] -= 1
            return web.Response(status=500)
        return web.Response(status=204)
