"""A registry that misbehaves on demand (for upstream fault tests): a token server
that hangs, 500s, 429 with Retry-After, a 200 without Docker-Content-Digest."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from types import TracebackType

from aiohttp import web

MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class FlakyRegistry:
    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.host = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> FlakyRegistry:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._runner is not None:
            # A hanging token request is still open: do not wait for it.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v2/{repo:.+}/manifests/{ref}", self.manifest)
        app.router.add_get("/token", self.token)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def token(self, request: web.Request) -> web.Response:
        await asyncio.sleep(120)  # hangs: the client's timeout must end it
        return web.json_response({"token": "t"})

    async def manifest(self, request: web.Request) -> web.Response:
        self.requests += 1
        mode = self.mode
        if mode == "hang-token" and request.headers.get("Authorization") is None:
            return web.Response(status=401, headers={
                "WWW-Authenticate": f'Bearer realm="http://{self.host}/token",service="x"'})
        if mode == "500":
            return web.Response(status=500, text="internal")
        if mode == "429":
            return web.Response(status=429, headers={"Retry-After": "2"})
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if mode != "no-digest-header":
            headers["Docker-Content-Digest"] = DIGEST
        body = MANIFEST if request.method == "GET" else None
        return web.Response(body=body, headers=headers)
