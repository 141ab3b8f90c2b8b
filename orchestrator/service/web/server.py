"""The daemon's web page (``[web] listen``): the hierarchy as a live picture, a
page per layer, runs and upstreams, small plots. Read-only unless
``[web] token_file`` is set (see access.py).

Every asset ships in this package and the Content-Security-Policy allows only
this origin, so the page asks no other host for anything (an air-gapped build
host shows it whole). Live parts come over server-sent events: node changes
from the board (board.py), fragment refresh hints, a build's log as it grows.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import html
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp_sse import sse_response

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import WebConfig
from orchestrator.core.picture import STYLE, PictureLayer, dot_source
from orchestrator.engines.guard import marker_end
from orchestrator.service.web.access import SESSION_COOKIE, Access
from orchestrator.service.web.board import LiveBoard, node_text
from orchestrator.service.web.source import WebSource

log = structlog.get_logger("orchestrator.web")
HERE = Path(__file__).parent
LOG_TAIL = 256 * 1024  # a page shows a log's newest part; log.txt has all of it
LOG_CHUNK = 64 * 1024
LOG_POLL_S = 0.2
# How soon a stream notices its page has gone (closed, navigated away): aiohttp
# does not cancel a handler when its client leaves, and a stream of a quiet
# daemon would otherwise hold its queue (and a first picture of every node) for
# hours, one per page ever opened.
GONE_CHECK_S = 2.0
HISTORY_ROWS = 30
PLOT_WINDOW_S = 14 * 86400.0
PLOT_LAYERS = 12
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def layer_url(layer: str) -> str:
    return "/layers/" + quote(layer, safe="")


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = time.time() - ts
    return f"{delta:.0f}s ago" if delta >= 0 else f"in {-delta:.0f}s"


def took(row: dict[str, Any]) -> str:
    if row.get("finished_at") and row.get("started_at"):
        return f"{row['finished_at'] - row['started_at']:.1f}s"
    if row.get("outcome") == "running" and row.get("started_at"):
        return f"{time.time() - row['started_at']:.0f}s so far"
    return "-"


def short(digest: str | None) -> str:
    if not digest:
        return "-"
    algo, _, hexa = digest.partition(":")
    return f"{algo}:{hexa[:12]}" if hexa else digest[:19]


FILTERS: dict[str, Callable[..., str]] = {"when": when, "ago": ago, "took": took,
                                          "short": short, "layer_url": layer_url}


def _read_chunk(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(offset)
            return fh.read(LOG_CHUNK), size
    except FileNotFoundError:
        return b"", 0


class WebServer:
    def __init__(self, source: WebSource, config: WebConfig) -> None:
        assert config.listen is not None
        self.source = source
        self.config = config
        self.access = Access(config.token_file)
        self.board = LiveBoard(source)
        self.runner: web.AppRunner | None = None
        self.where = ""
        self._stopping = asyncio.Event()
        self._board_task: asyncio.Task[None] | None = None
        self._picture: tuple[int, str] | None = None  # (layout version, svg)
        self._picture_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.plain_errors, self.host_check, self.guard])
        app.on_response_prepare.append(self.secure_headers)
        aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("orchestrator.service.web",
                                                              "templates"),
                             autoescape=True,
                             filters=FILTERS)
        r = app.router
        r.add_get("/", self.graph_page)
        r.add_get("/graph.svg", self.graph_svg)
        r.add_get("/picture.css", self.picture_css)
        r.add_get("/events", self.events)
        r.add_get("/layers/{id}", self.layer_page)
        r.add_get("/layers/{id}/history", self.layer_history)
        r.add_get("/layers/{id}/papers", self.layer_papers)
        r.add_get("/layers/{id}/sbom-diff", self.sbom_diff)
        r.add_get("/builds/{id}/log", self.log_stream)
        r.add_get("/builds/{id}/log.txt", self.log_text)
        r.add_get("/runs", self.runs_page)
        r.add_get("/runs/panel", self.runs_panel)
        r.add_get("/plots.json", self.plots)
        r.add_post("/sign-in", self.sign_in)
        r.add_post("/sign-out", self.sign_out)
        r.add_post("/layers/{id}/trigger", self.trigger)
        r.add_post("/builds/{id}/cancel", self.cancel)
        r.add_static("/static", HERE / "static", append_version=False)
        return app

    async def start(self) -> None:
        assert self.config.listen is not None
        host, port = self.config.listen
        self._board_task = asyncio.create_task(self.board.run(), name="web-board")
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                    shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (host, port)
        self.where = f"http://{'[' + bound[0] + ']' if ':' in bound[0] else bound[0]}:{bound[1]}"
        log.info("web_listening", url=self.where, actions=self.access.actions)

    async def stop(self) -> None:
        self._stopping.set()
        self.board.close()
        if self._board_task is not None:
            self._board_task.cancel()
            await asyncio.gather(self._board_task, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()

    # -- middlewares ---------------------------------------------------------------

    @web.middleware
    async def plain_errors(self, request: web.Request, handler: Handler
                           ) -> web.StreamResponse:
        """An error is a short text answer (its headers come from secure_headers)."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = web.Response(status=exc.status, text=exc.reason or "error")
        return response

    @staticmethod
    async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
        """On every answer as its headers go out: streamed ones (a log, the event
        streams, static files) included, which a middleware sees only once sent."""
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Cache-Control", "no-store")

    @web.middleware
    async def host_check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Only names this page was meant to have: a page of another site that
        rebinds its own name to 127.0.0.1 sends that name, and is refused."""
        if not allowed_host(request.host, self.config.hosts):
            return web.Response(status=421, text=f"this page does not answer to {request.host!r}"
                                " (a reverse proxy's name goes in [web] hosts)")
        return await handler(request)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every POST but signing in needs the right to act (token or session + CSRF)."""
        if request.method == "POST" and request.path != "/sign-in":
            form = await request.post() if request.content_type in (
                "application/x-www-form-urlencoded", "multipart/form-data") else {}
            csrf = form.get("csrf") or request.headers.get("X-CSRF-Token")
            if not self.access.may_act(request, csrf if isinstance(csrf, str) else None):
                reason = ("actions are off: set [web] token_file to enable them"
                          if not self.access.actions else
                          "not allowed: sign in on the page (or send the token) first")
                return web.Response(status=403, text=reason)
        return await handler(request)

    # -- context shared by the templates -------------------------------------------

    def _context(self, request: web.Request, **more: Any) -> dict[str, Any]:
        session = self.access.session(request)
        return {"actions": self.access.actions, "signed_in": session is not None,
                "csrf": self.access.csrf(session) if session else "",
                "path": request.path, **more}

    def _layer(self, request: web.Request) -> str:
        lid = request.match_info["id"]
        if lid not in self.source.catalog().layers:
            raise web.HTTPNotFound(reason=f"no layer {lid}")
        return lid

    # -- the graph -------------------------------------------------------------------

    async def picture(self) -> str:
        """The laid-out SVG, made again only when the layout changes (a reload, an
        upstream's new value); states move on the page, not in a new layout."""
        async with self._picture_lock:
            version = self.board.layout_version
            if self._picture is not None and self._picture[0] == version:
                return self._picture[1]
            import graphviz

            board = self.board.board
            layers = [PictureLayer(row.layer, row.parent, row.upstream, row.tags, row.state,
                                   node_text(row), row.finished_at)
                      for row in board.rows.values()]
            source = dot_source(layers, board.upstreams, link="/layers/")
            laid_out: bytes = await asyncio.to_thread(graphviz.pipe, "dot", "svg",
                                                      source.encode())
            svg = laid_out.decode()
            svg = svg[svg.index("<svg"):]  # the XML prolog and doctype have no place inline
            self._picture = (version, svg)
            return svg

    async def graph_page(self, request: web.Request) -> web.StreamResponse:
        if not self.board.seeded.is_set() and self.source.ready():
            with contextlib.suppress(TimeoutError):  # the daemon's view, being read
                await asyncio.wait_for(self.board.seeded.wait(), 5.0)
        return aiohttp_jinja2.render_template(
            "graph.html", request, self._context(request, svg=await self.picture(),
                                                 layers=len(self.board.board.rows),
                                                 layout=self.board.layout_version))

    async def graph_svg(self, request: web.Request) -> web.StreamResponse:
        svg = await self.picture()
        return web.Response(text=svg, content_type="image/svg+xml",
                            headers={"X-Layout-Version": str(self.board.layout_version)})

    async def picture_css(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=STYLE, content_type="text/css")

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``nodes`` (JSON list of node states), ``changed``
        (lists worth a refresh), ``layout`` (the picture needs fetching again)."""
        nodes = request.query.get("only") != "changed"  # pages of lists need no nodes
        async with sse_response(request, headers={"X-Accel-Buffering": "no"}) as sse, \
                self.board.follow(nodes=nodes) as queue:
            with contextlib.suppress(ConnectionResetError):  # the page went away
                while not self._stopping.is_set():
                    item = await _next_or_gone(queue, request)
                    if item is None:
                        break
                    kind, data = item
                    if kind == "nodes" and not nodes:
                        continue
                    await sse.send(json.dumps(data, default=str), event=kind)
        return sse

    # -- a layer -----------------------------------------------------------------------

    async def layer_page(self, request: web.Request) -> web.StreamResponse:
        lid = self._layer(request)
        layer = self.source.catalog().layers[lid]
        record = await self.source.record(lid)
        parent_record = await self.source.record(layer.parent) if layer.parent else None
        builds = await self.source.builds(lid, HISTORY_ROWS)
        row = self.board.board.rows.get(lid)
        shown = next((b for b in builds if b["layer"] == lid), None)
        chosen = request.query.get("build")
        if chosen:
            shown = next((b for b in builds if b["id"] == chosen), None) or \
                await self.source.build(chosen)
        built = [b for b in builds if b["layer"] == lid and b["outcome"] == "built"
                 and b.get("digest")]
        upstreams = self.board.board.upstreams
        return aiohttp_jinja2.render_template("layer.html", request, self._context(
            request, lid=lid, layer=layer, record=record, parent_record=parent_record,
            builds=builds, shown=shown, row=row, state_text=node_text(row) if row else "",
            upstream_value=upstreams.get(layer.upstream) if layer.upstream else None,
            diff=(built[1]["digest"], built[0]["digest"]) if len(built) > 1 else None,
            queued=request.query.get("queued"),
            children=[c for c, other in self.source.catalog().layers.items()
                      if other.parent == lid]))

    async def layer_history(self, request: web.Request) -> web.StreamResponse:
        lid = self._layer(request)
        builds = await self.source.builds(lid, HISTORY_ROWS)
        row = self.board.board.rows.get(lid)
        return aiohttp_jinja2.render_template("history.html", request, self._context(
            request, lid=lid, builds=builds, row=row,
            state_text=node_text(row) if row else ""))

    async def layer_papers(self, request: web.Request) -> web.StreamResponse:
        """The explain chain and the SBOM headline, read from the registry (slow:
        loaded after the page)."""
        lid = self._layer(request)
        record = await self.source.record(lid)
        chain: list[dict[str, Any]] = []
        problem = None
        if record is None:
            problem = "not built yet"
        else:
            try:
                chain = await asyncio.wait_for(self.source.explain(record["ref"]), 30)
            except TimeoutError:
                problem = "the registry did not answer within 30 s"
            except OrchestratorError as exc:
                problem = str(exc)
        return aiohttp_jinja2.render_template("papers.html", request, self._context(
            request, lid=lid, chain=chain, problem=problem))

    async def sbom_diff(self, request: web.Request) -> web.StreamResponse:
        lid = self._layer(request)
        record = await self.source.record(lid)
        old, new = request.query.get("old", ""), request.query.get("new", "")
        if record is None or not old.startswith("sha256:") or not new.startswith("sha256:"):
            raise web.HTTPBadRequest(reason="old and new: image digests of this layer")
        repo = record["ref"].split("@", 1)[0]
        try:
            text = await asyncio.wait_for(self.source.sbom_diff(f"{repo}@{old}",
                                                                f"{repo}@{new}"), 60)
        except TimeoutError:
            text = "the registry did not answer within 60 s"
        except OrchestratorError as exc:
            text = str(exc)
        return aiohttp_jinja2.render_template("diff.html", request, self._context(
            request, lid=lid, old=old, new=new, text=text))

    # -- a build's log -------------------------------------------------------------------

    async def _log_of(self, request: web.Request) -> tuple[str, Path]:
        build_id = request.match_info["id"]
        build = await self.source.build(build_id)
        if build is None or not build.get("log_path"):
            raise web.HTTPNotFound(reason=f"no build {build_id}")
        return build_id, Path(build["log_path"])

    async def _chunks(self, request: web.Request, build_id: str, path: Path, start: int,
                      follow: bool) -> AsyncIterator[bytes]:
        """The log from ``start``, then what the builder adds while the build runs
        (until the page goes away)."""
        offset = start
        cap = self.source.log_cap()
        while not self._stopping.is_set() and not _gone(request):
            chunk, size = await asyncio.to_thread(_read_chunk, path, offset)
            if size < offset and cap > 0:
                # Past its cap the log's tail was rewritten: go on from where it starts.
                offset = marker_end(cap)
                yield b"\n[orchestrator: log compacted; newest output follows]\n"
                continue
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            if not follow:
                return
            row = await self.source.build(build_id)
            if row is None or row["outcome"] != "running":
                follow = False  # one last read picks up the final lines
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), LOG_POLL_S)

    async def log_stream(self, request: web.Request) -> web.StreamResponse:
        """SSE: ``chunk`` events of escaped text (the newest LOG_TAIL bytes first,
        then what comes while the build runs), ``end`` when it is over."""
        build_id, path = await self._log_of(request)
        size = await asyncio.to_thread(lambda: path.stat().st_size if path.exists() else 0)
        start = max(0, size - LOG_TAIL)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        async with sse_response(request, headers={"X-Accel-Buffering": "no"}) as sse:
            with contextlib.suppress(ConnectionResetError):  # the page went away
                if start:
                    await sse.send(html.escape(f"[… {start} earlier bytes: see log.txt]\n"),
                                   event="chunk")
                async for chunk in self._chunks(request, build_id, path, start, follow=True):
                    text = decoder.decode(chunk)
                    if text:
                        await sse.send(html.escape(text), event="chunk")
                await sse.send("end", event="end")
                # The page closes the stream on "end"; wait for it so the browser does
                # not reconnect and read the log again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 5.0)
        return sse

    async def log_text(self, request: web.Request) -> web.StreamResponse:
        build_id, path = await self._log_of(request)
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            async for chunk in self._chunks(request, build_id, path, 0, follow=False):
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the reader went away; nothing to tell it
        return response

    # -- runs, upstreams, engines -----------------------------------------------------------

    async def runs_page(self, request: web.Request) -> web.StreamResponse:
        return aiohttp_jinja2.render_template("runs.html", request, self._context(
            request, status=await self.source.status()))

    async def runs_panel(self, request: web.Request) -> web.StreamResponse:
        return aiohttp_jinja2.render_template("runs_panel.html", request, self._context(
            request, status=await self.source.status()))

    async def plots(self, request: web.Request) -> web.StreamResponse:
        """Build durations per layer and queue depth over time, from the state database."""
        now = time.time()
        since = now - PLOT_WINDOW_S
        layer = request.query.get("layer")
        history = self.source.history()
        durations = await asyncio.to_thread(history.durations, since, layer)
        if layer is None:
            # The slowest layers by their newest build: the ones worth watching.
            ranked = sorted(durations, key=lambda lid: -durations[lid][-1].value)
            durations = {lid: durations[lid] for lid in ranked[:PLOT_LAYERS]}
        depth = await asyncio.to_thread(history.queue_depth, since, now) if layer is None \
            else []
        return web.json_response({
            "durations": {lid: [[s.at for s in samples], [round(s.value, 3) for s in samples]]
                          for lid, samples in durations.items()},
            "queue": [[s.at for s in depth], [s.value for s in depth]],
        })

    # -- actions -------------------------------------------------------------------------

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = form.get("token")
        back = _local_path(str(form.get("back") or "/"))
        session = self.access.sign_in(token) if isinstance(token, str) else None
        if session is None:
            log.warning("web_sign_in_refused", peer=request.remote)
            return web.Response(status=403, text="wrong token" if self.access.actions
                                else "actions are off: set [web] token_file to enable them")
        log.info("web_signed_in", peer=request.remote)
        response = web.HTTPSeeOther(back)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="Strict",
                            path="/", secure=request.secure)
        raise response

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        self.access.sign_out(request)
        response = web.HTTPSeeOther("/")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def trigger(self, request: web.Request) -> web.StreamResponse:
        lid = self._layer(request)
        form = await request.post()
        try:
            answer = await self.source.trigger([lid], force=form.get("force") == "1",
                                               cause=f"web trigger from {request.remote}")
        except OrchestratorError as exc:
            return web.Response(status=409, text=str(exc))
        log.info("web_trigger", layer=lid, request_id=answer.get("id"), peer=request.remote)
        raise web.HTTPSeeOther(layer_url(lid) + "?queued=" + quote(str(answer.get("id"))))

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        build_id = request.match_info["id"]
        if not self.source.cancel(build_id):
            return web.Response(status=409, text=f"build {build_id} is not running")
        log.info("web_cancel", build_id=build_id, peer=request.remote)
        form = await request.post()
        raise web.HTTPSeeOther(_local_path(str(form.get("back") or "/runs")))


def _gone(request: web.Request) -> bool:
    """The client closed its connection (aiohttp drops the transport then)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _next_or_gone(queue: asyncio.Queue[Any], request: web.Request) -> Any:
    """The queue's next item, or None once the client has gone."""
    while True:
        try:
            # A timed-out get leaves its item in the queue for the next one.
            return await asyncio.wait_for(queue.get(), GONE_CHECK_S)
        except TimeoutError:
            if _gone(request):
                return None


def allowed_host(host: str, names: tuple[str, ...]) -> bool:
    """An IP address, localhost, or one of ``names`` (any port)."""
    name = urlsplit(f"//{host}").hostname or ""
    if name in ("localhost", *names):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _local_path(path: str) -> str:
    """A redirect stays on this site: a path, never another host."""
    return path if path.startswith("/") and not path.startswith("//") else "/"
