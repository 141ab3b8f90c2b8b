"""The control socket: HTTP/1.1 over a Unix socket (DESIGN §4), as the Docker
and Podman APIs do. JSON bodies, errors as ``{"message": …}`` with real codes.

Mode 0660 (group from ``[control] group``), the peer's uid (SO_PEERCRED)
logged with each request. A slow, broken or hostile client costs only its own
connection: bodies are capped at 1 MiB and must arrive within a deadline,
nesting is bounded, every rejection (the HTTP parser's included) is a JSON
4xx and one info-level line, and logs are streamed in bounded chunks read off
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from orchestrator.build.state import AsyncStateStore
from orchestrator.core.errors import InputError, OrchestratorError
from orchestrator.core.model import Config
from orchestrator.engines.guard import marker_end
from orchestrator.service.connections import Connections
from orchestrator.service.events import EventBus
from orchestrator.service.metrics import Metrics
from orchestrator.service.ports import Loaded, Refused
from orchestrator.service.queue import WorkQueue
from orchestrator.service.views import Views

MAX_BODY = 1024 * 1024
BODY_TIMEOUT_S = 5.0
LOG_POLL_S = 0.2
LOG_CHUNK = 64 * 1024
MAX_LIMIT = 1000
log = structlog.get_logger("orchestrator.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_uid(request: web.BaseRequest) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


class HangUpAfter(web.Response):
    """An answer after which the connection closes at once. For a 408 the client
    stopped sending its body: aiohttp would otherwise linger up to 10 s to drain
    a body that is not coming, holding the connection despite ``Connection: close``."""

    def __init__(self, request: web.BaseRequest, status: int, message: str) -> None:
        super().__init__(text=json.dumps({"message": message}), status=status,
                         content_type="application/json")
        self.force_close()
        self._hang_up_on = request.protocol

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        self._hang_up_on.force_close()  # the answer is flushed before the close


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    uid = peer_uid(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # 404/405/413 raised by aiohttp itself
        if exc.status < 400:
            raise
        message = {404: "no such endpoint", 405: f"method {request.method} not allowed here",
                   413: f"request body larger than {MAX_BODY} bytes"}.get(exc.status, exc.reason)
        response = error(exc.status, message)
    except Refused as exc:
        response = (HangUpAfter(request, exc.status, str(exc)) if exc.status == 408
                    else error(exc.status, str(exc)))
    except InputError as exc:
        status = 404 if "unknown layer" in exc.problem else 400
        response = error(status, str(exc))
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        # Our bug, not the client's: say so in JSON, log it once with its traceback.
        log.error("api_error", method=request.method, path=request.path, error=repr(exc),
                  exc_info=exc)
        response = error(500, f"internal error: {type(exc).__name__}")
    log.info("api_request", method=request.method, path=request.path, status=response.status,
             peer_uid=uid)
    return response


class JsonErrorHandler(RequestHandler):
    """What aiohttp's own HTTP parser rejects (a URL over 8 kB, a path that is not
    UTF-8, too many headers) gets the same JSON error as everything else, and
    one info line instead of an error-level traceback any local client could
    use to flood the log."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        reason = message or (str(exc) if exc else "bad request")
        if status >= 500:
            log.error("api_error", status=status, error=reason, exc_info=exc)
        else:
            log.info("api_rejected", status=status, reason=reason[:200],
                     peer_uid=peer_uid(request))
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        response = error(status, reason[:500] if status < 500 else "internal error")
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # same state, our connection handler
        return server


def _bounded_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise Refused("malformed JSON: nested too deeply", 400) from None
    except ValueError as exc:
        raise Refused(f"malformed JSON: {exc}", 400) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise Refused(f"request body not received within {BODY_TIMEOUT_S:g} s", 408) from None
    if not body:
        return {}
    data = _bounded_json(body)
    if not isinstance(data, dict):
        raise Refused("expected a JSON object", 400)
    return data


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        raise Refused(f"limit: expected a number from 1 to {MAX_LIMIT}, got {raw!r}",
                      400) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Refused(f"limit: expected a number from 1 to {MAX_LIMIT}, got {limit}", 400)
    return limit


def _read_chunk(path: Path, offset: int) -> tuple[bytes, int]:
    """Up to LOG_CHUNK bytes of ``path`` from ``offset``, and the file's size."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(offset)
            return fh.read(LOG_CHUNK), size
    except FileNotFoundError:
        return b"", 0


class ControlTarget(Protocol):
    """What the control socket reads and asks of the daemon."""

    loaded: Loaded
    state: AsyncStateStore
    queue: WorkQueue
    bus: EventBus
    metrics: Metrics
    views: Views
    connections: Connections
    backend_error: str | None

    @property
    def phase(self) -> str: ...

    @property
    def config(self) -> Config: ...

    async def trigger(self, names: list[str], *, force: bool,
                      cause: str) -> dict[str, Any]: ...

    def cancel(self, build_id: str) -> bool: ...

    async def reload(self) -> None: ...


class ControlServer:
    def __init__(self, daemon: ControlTarget) -> None:
        self.daemon = daemon
        self.runner: web.AppRunner | None = None
        self.where = str(daemon.config.control_socket)
        self._bound: Path | None = None
        self.metrics_runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_as_json])
        r = app.router
        r.add_get("/v1/_ping", self.ping)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/layers", self.layers)
        r.add_post("/v1/builds", self.create_build)
        r.add_get("/v1/builds", self.list_builds)
        r.add_get("/v1/builds/{id}", self.get_build)
        r.add_get("/v1/builds/{id}/log", self.build_log)
        r.add_post("/v1/builds/{id}/cancel", self.cancel_build)
        r.add_get("/v1/events", self.events)
        r.add_post("/v1/reload", self.reload)
        r.add_get("/v1/images/{ref:.+}/explain", self.explain)
        r.add_get("/metrics", self.metrics)
        return app

    async def start(self, inherited: list[socket.socket]) -> None:
        # A slow client is one connection among many; drop idle keep-alives quickly.
        self.runner = JsonErrorRunner(self.app(), access_log=None, handle_signals=False,
                                      keepalive_timeout=15)
        await self.runner.setup()
        if inherited:
            sock = inherited[0]
            self.where = f"fd:{sock.fileno()} ({sock.getsockname() or 'activated'})"
        else:
            sock = self._bind(self.daemon.config.control_socket)
        sock.setblocking(False)
        await web.SockSite(self.runner, sock).start()
        listen = self.daemon.config.daemon.metrics_listen
        if listen is not None:
            # Prometheus scrapes over TCP: that listener serves /metrics and nothing else.
            metrics_app = web.Application(middlewares=[errors_as_json])
            metrics_app.router.add_get("/metrics", self.metrics)
            self.metrics_runner = JsonErrorRunner(metrics_app, access_log=None,
                                                  handle_signals=False)
            await self.metrics_runner.setup()
            await web.TCPSite(self.metrics_runner, listen[0], listen[1]).start()

    def _bind(self, path: Path) -> socket.socket:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            found = path.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(found.st_mode):
                # A mistyped [control] socket must never cost the user a file.
                raise InputError("[control] socket", f"{path} exists and is not a socket; "
                                 "choose another path or remove it yourself")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale: left by a daemon that died
            else:
                raise Refused(f"another daemon is listening on {path}", 409)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o117)  # never world-accessible, not even between bind and chmod
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        group = self.daemon.config.daemon.socket_group
        if group:
            try:
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
            except KeyError:
                raise InputError("[control] group", f"no group named {group!r}") from None
        sock.listen(64)
        self._bound = path
        return sock

    async def stop(self) -> None:
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        if self.runner is not None:
            await self.runner.cleanup()
        if self._bound is not None:
            with contextlib.suppress(FileNotFoundError):
                self._bound.unlink()

    # -- handlers ---------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.StreamResponse:
        if self.daemon.phase != "ready":
            why = self.daemon.backend_error or self.daemon.phase
            return error(503, f"not ready: {why}")
        return web.Response(text="OK")

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.daemon.views.status())

    async def layers(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"layers": await self.daemon.views.layers()})

    async def create_build(self, request: web.Request) -> web.StreamResponse:
        data = await read_json(request)
        unknown = set(data) - {"layers", "force"}
        if unknown:
            raise Refused(f"unknown field(s): {', '.join(sorted(unknown))} "
                          "(expected layers, force)", 400)
        layers = data.get("layers", list(self.daemon.loaded.catalog.layers))
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers) \
                or not layers:
            raise Refused("layers: expected a non-empty list of layer names", 400)
        force = data.get("force", False)
        if not isinstance(force, bool):
            raise Refused("force: expected true or false", 400)
        uid = peer_uid(request)
        who = f"uid {uid}" if uid is not None else "unknown peer"
        answer = await self.daemon.trigger(layers, force=force,
                                           cause=f"manual trigger by {who}")
        return web.json_response(answer, status=202)

    async def list_builds(self, request: web.Request) -> web.StreamResponse:
        limit = _limit(request)
        layer = request.query.get("layer")
        return web.json_response({"builds": await self.daemon.state.history.builds(layer, limit)})

    async def get_build(self, request: web.Request) -> web.StreamResponse:
        build_id = request.match_info["id"]
        build = await self.daemon.state.history.get(build_id)
        if build is not None:
            return web.json_response(build)
        # A request id (from POST /v1/builds): what it asked, its state, its builds.
        found = await self.daemon.queue.request(build_id)
        if found is None:
            raise Refused(f"no build or request {build_id}", 404)
        return web.json_response(found)

    async def build_log(self, request: web.Request) -> web.StreamResponse:
        build_id = request.match_info["id"]
        build = await self.daemon.state.history.get(build_id)
        if build is None or not build.get("log_path"):
            raise Refused(f"no build {build_id}", 404)
        follow = request.query.get("follow") in ("1", "true", "yes")
        path = Path(build["log_path"])
        cap = self.daemon.config.daemon.log_max_bytes
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        offset = 0
        while True:
            chunk, size = await asyncio.to_thread(_read_chunk, path, offset)
            if size < offset and cap > 0:
                # The log passed its cap and its tail was compacted: go on from
                # where the kept tail starts.
                offset = marker_end(cap)
                await response.write(b"\n[orchestrator: log compacted; newest output "
                                     b"follows]\n")
                continue
            if chunk:
                await response.write(chunk)  # waits while the client is slow: bounded
                offset += len(chunk)
                continue
            if not follow:
                break
            row = await self.daemon.state.history.get(build_id)
            if row is None or row["outcome"] != "running":
                follow = False  # one last read picks up the final lines
                continue
            await asyncio.sleep(LOG_POLL_S)
        await response.write_eof()
        return response

    async def cancel_build(self, request: web.Request) -> web.StreamResponse:
        build_id = request.match_info["id"]
        if not self.daemon.cancel(build_id):
            if await self.daemon.state.history.get(build_id) is None:
                raise Refused(f"no build {build_id}", 404)
            raise Refused(f"build {build_id} is not running", 409)
        return web.json_response({"id": build_id, "cancelled": True}, status=202)

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async with self.daemon.bus.subscribe() as queue:
            while True:
                record = await queue.get()
                if record is None:
                    break
                await response.write(json.dumps(record, default=str).encode() + b"\n")
        return response

    async def reload(self, request: web.Request) -> web.StreamResponse:
        await read_json(request)  # the body limit and deadline hold here too
        await self.daemon.reload()
        layers = len(self.daemon.loaded.catalog.layers)
        return web.json_response({"reloaded": True, "layers": layers})

    async def explain(self, request: web.Request) -> web.StreamResponse:
        from orchestrator.registry import explain as papers

        try:
            chain = await papers.explain(self.daemon.connections.client, request.match_info["ref"])
        except papers.NotFound as exc:
            raise Refused(str(exc), 404) from None
        except OrchestratorError as exc:
            raise Refused(str(exc), 400) from None
        return web.json_response({"chain": [level.as_json() for level in chain]})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.daemon.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
