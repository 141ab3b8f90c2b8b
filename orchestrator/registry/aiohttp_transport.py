"""The registry client's HTTP over aiohttp, for the daemon (which loads aiohttp
for its control socket anyway, and talks to registries all day)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import aiohttp

from orchestrator.registry.transport import (
    MAX_BODY,
    MAX_REDIRECTS,
    Headers,
    Response,
    TransportError,
)


class AiohttpTransport:
    def __init__(self, timeout_s: float = 30.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # A streamed blob (an image layer for the SBOM) may take minutes: it gets
        # connect and idle-read deadlines instead of a total one.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s,
                                                     sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, url: str, headers: Mapping[str, str],
                      data: bytes | None = None, dest: Path | None = None) -> Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            # aiohttp drops Authorization itself when a redirect changes the origin.
            async with self._session.request(
                    method, url, headers=dict(headers), data=data, allow_redirects=True,
                    max_redirects=MAX_REDIRECTS,
                    timeout=self._stream_timeout if dest is not None else self._timeout) as resp:
                if dest is not None and resp.status == 200:
                    with dest.open("wb") as out:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            out.write(chunk)
                    return Response(resp.status, Headers(resp.headers.items()), b"")
                if method == "HEAD":
                    return Response(resp.status, Headers(resp.headers.items()), b"")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise TransportError(f"answer larger than {MAX_BODY >> 20} MiB")
                return Response(resp.status, Headers(resp.headers.items()), bytes(body))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
