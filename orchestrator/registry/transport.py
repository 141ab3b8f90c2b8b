"""HTTP for the registry client, behind one small interface.

Two implementations with the same behaviour (HTTP/1.1 keep-alive, redirects
followed with credentials dropped when the host changes, a total timeout):

- :class:`PooledTransport`, stdlib ``http.client`` connections in a pool, driven
  from worker threads. It loads in a few milliseconds, which is most of what a
  one-shot ``plan``/``build`` spends on a warm registry.
- ``AiohttpTransport`` (``registry/aiohttp_transport.py``) for the daemon, which
  already runs aiohttp for its control socket.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


class TransportError(Exception):
    """The request could not be completed (connection, timeout, protocol)."""


class Headers(dict[str, str]):
    """Response headers, looked up without regard to case."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for name, value in items:
            key = name.lower()
            # Repeated headers (WWW-Authenticate, Link) joined as RFC 9110 allows.
            self[key] = f"{self[key]}, {value}" if key in self else value

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass(frozen=True)
class Response:
    status: int
    headers: Headers
    body: bytes


class Transport(Protocol):
    async def request(self, method: str, url: str, headers: Mapping[str, str],
                      data: bytes | None = None, dest: Path | None = None) -> Response:
        """Send one request, following redirects; raise TransportError on failure.
        With ``dest``, a successful answer's body is streamed to that file (and the
        returned body is empty)."""
        ...

    async def close(self) -> None: ...


def origin(url: str) -> tuple[str, str]:
    """(scheme, host[:port]) with the default port left out."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    default = 443 if parts.scheme == "https" else 80
    port = parts.port
    return parts.scheme.lower(), host if port in (None, default) else f"{host}:{port}"


def redirect_headers(headers: Mapping[str, str], old_url: str, new_url: str) -> dict[str, str]:
    """Registries redirect blob and manifest reads to storage hosts (S3, a CDN):
    the registry's credentials must not follow them there, nor go out in clear
    text after a redirect from https to http on the same host."""
    if origin(old_url) == origin(new_url):
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


# Manifests, tag lists and tokens are small; a registry that sends more is broken
# or hostile and must not fill memory. Blobs are streamed to files instead.
MAX_BODY = 16 << 20


_Key = tuple[str, str, int]


class PooledTransport:
    """Keep-alive connections per host, shared by worker threads; one request
    per connection at a time, as HTTP/1.1 without pipelining requires."""

    def __init__(self, timeout_s: float = 30.0, max_idle_per_host: int = 8) -> None:
        self.timeout_s = timeout_s
        self.max_idle = max_idle_per_host
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str],
                      data: bytes | None = None, dest: Path | None = None) -> Response:
        return await asyncio.to_thread(self.fetch, method, url, headers, data, dest)

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    # -- blocking part, runs in a worker thread --------------------------------

    def fetch(self, method: str, url: str, headers: Mapping[str, str],
              data: bytes | None = None, dest: Path | None = None) -> Response:
        sent = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._once(method, url, sent, data, dest)
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or not location:
                return response
            target = urllib.parse.urljoin(url, location)
            sent = redirect_headers(sent, url, target)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, data = "GET", None
            url = target
        raise TransportError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _once(self, method: str, url: str, headers: Mapping[str, str],
              data: bytes | None, dest: Path | None = None) -> Response:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"unsupported URL {url!r}")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https"
                                                             else 80))
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        for attempt in range(2):
            conn, reused = self._checkout(key)
            # A total deadline, as aiohttp's: the socket timeout alone lets a server
            # that drips a byte a second hold a request for ever. A streamed blob
            # has only the socket's idle timeout (a large layer takes its time).
            deadline = None if dest is not None else time.monotonic() + self.timeout_s
            try:
                conn.request(method, target, body=data, headers=dict(headers))
                resp = conn.getresponse()
                if dest is not None and resp.status == 200:
                    with dest.open("wb") as out:
                        while chunk := resp.read(1 << 20):
                            out.write(chunk)
                    body = b""
                else:
                    body = _read_body(resp, deadline)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                # A kept-alive connection the server has since closed: once more on a
                # fresh one. A fresh connection failing is a real failure.
                if reused and attempt == 0:
                    continue
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            except TransportError:
                conn.close()  # half read: never back in the pool
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                what = "timed out" if isinstance(exc, socket.timeout | TimeoutError) else \
                    f"{type(exc).__name__}: {exc}"
                raise TransportError(what) from exc
            if resp.will_close:
                conn.close()
            else:
                self._checkin(key, conn)
            return Response(resp.status, Headers(resp.getheaders()), body)
        raise AssertionError("unreachable")

    def _checkout(self, key: _Key) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, host, port = key
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return http.client.HTTPSConnection(host, port, timeout=self.timeout_s,
                                               context=self._tls), False
        return http.client.HTTPConnection(host, port, timeout=self.timeout_s), False

    def _checkin(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if self._closed or len(idle) >= self.max_idle:
                conn.close()
            else:
                idle.append(conn)


def _read_body(resp: http.client.HTTPResponse, deadline: float | None) -> bytes:
    """The whole body, at most MAX_BODY bytes, before ``deadline``."""
    parts: list[bytes] = []
    size = 0
    while chunk := resp.read1(1 << 16):
        size += len(chunk)
        if size > MAX_BODY:
            raise TransportError(f"answer larger than {MAX_BODY >> 20} MiB")
        if deadline is not None and time.monotonic() > deadline:
            raise TransportError("timed out (the answer kept coming)")
        parts.append(chunk)
    # read1 does not mark a Content-Length body done when it ends exactly: close the
    # response (not the connection) so the connection can serve the next request.
    resp.close()
    return b"".join(parts)
