"""The page's picture of the hierarchy, kept live: one task follows the event
bus and keeps a board (core.runboard) of every layer's state; each browser
gets its own bounded queue of node changes (SSE). The daemon's own view
(``GET /v1/layers``) seeds the board at start, after each run and on reload,
so what no event says (a reuse, a skip, a stale layer) is right too."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog

from orchestrator.core.model import Catalog
from orchestrator.core.picture import cut, state_words
from orchestrator.core.runboard import Board, Row, event_time, first_line, upstream_value
from orchestrator.service.web.source import WebSource

log = structlog.get_logger("orchestrator.web")
BROWSER_BACKLOG = 1000
# Events after which the daemon's own view is read again.
RESEED_ON = frozenset({"daemon_ready", "run_finished", "reloaded", "catalog_reloaded",
                       "run_refused", "upstream_changed"})
# Events after which pages' lists (history, queue, engines) are worth a refresh.
LISTS_CHANGE_ON = frozenset({"build_started", "build_finished", "trigger_received",
                             "run_started", "run_finished", "builder_down", "builder_up",
                             "upstream_changed", "upstream_check_failed", "reloaded",
                             "catalog_reloaded"})
LAYOUT_EVENTS = frozenset({"reloaded", "catalog_reloaded"})


def node_text(row: Row) -> str:
    """A node's state in words (the page adds a building layer's elapsed time)."""
    state = row.state
    if state == "building":
        return f"building on {row.builder or '?'}"
    if state == "waiting":
        return f"waiting on {row.parent}"
    if state == "failed":
        return f"FAILED: {row.error}" if row.error else "FAILED"
    if state in ("skipped", "stale", "superseded", "deferred") and row.error:
        return f"{state}: {row.error}"
    return state_words(state)


def node_of(row: Row) -> dict[str, Any]:
    return {"id": row.layer, "state": row.state, "text": cut(node_text(row), 30),
            "since": row.since, "built": row.finished_at, "build_id": row.build_id}


class LiveBoard:
    def __init__(self, source: WebSource) -> None:
        self.source = source
        self.board = Board({})
        self.catalog: Catalog | None = None
        self.layout_version = 0  # bumped when the picture needs a new layout
        self.seeded = asyncio.Event()
        self._touched: dict[str, float] = {}  # layer -> when an event last changed it
        self._browsers: set[asyncio.Queue[tuple[str, Any] | None]] = set()
        self._seeding: asyncio.Task[None] | None = None
        self._seed_again = False
        self._follow_catalog()

    # -- following the daemon ---------------------------------------------------

    async def run(self) -> None:
        """Until the bus closes (the daemon stops): apply events, tell browsers."""
        try:
            async with self.source.subscribe() as queue:
                if self.source.ready():
                    self._reseed()
                while (record := await queue.get()) is not None:
                    try:
                        self.on_event(record)
                    except Exception as exc:  # one odd event must not end the page
                        log.error("web_event_failed", error=repr(exc), exc_info=exc)
        finally:
            if self._seeding is not None:
                self._seeding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._seeding
            for browser in list(self._browsers):
                with contextlib.suppress(asyncio.QueueFull):
                    browser.put_nowait(None)

    def on_event(self, record: dict[str, Any]) -> None:
        event = str(record.get("event"))
        now = event_time(record.get("timestamp"), time.time())
        changed: set[str] = set()
        if event in LAYOUT_EVENTS:
            self._follow_catalog()
        if event == "run_started":
            run = self.source.current_run() or {}
            changed = self.board.start_run(list(run.get("layers") or []), now)
        elif event == "run_finished":
            results = self.source.last_results()
            changed = self.board.settle({lid: r["outcome"] for lid, r in results.items()
                                         if lid in self.board.rows and
                                         self.board.rows[lid].state in ("waiting", "queued")},
                                        {lid: r.get("why") for lid, r in results.items()})
        else:
            changed = self.board.apply(event, record, now)
        for lid in changed:
            self._touched[lid] = time.monotonic()
        if changed:
            self._send("nodes", [node_of(self.board.rows[lid]) for lid in sorted(changed)])
        if event in LISTS_CHANGE_ON:
            self._send("changed", event)
        if event in RESEED_ON:
            self._reseed()

    def _follow_catalog(self) -> None:
        """A new catalog (a reload, an edited layer.toml) or upstream value: new rows."""
        catalog = self.source.catalog()
        if catalog is self.catalog:
            return
        old = self.board
        self.catalog = catalog
        self.board = Board.of((lid, layer.parent, layer.upstream, layer.tags)
                              for lid, layer in catalog.layers.items())
        for lid, row in self.board.rows.items():
            before = old.rows.get(lid)
            if before is not None:
                row.state, row.builder, row.since = before.state, before.builder, before.since
                row.error, row.finished_at = before.error, before.finished_at
                row.build_id = before.build_id
        self.board.upstreams = old.upstreams
        self.layout_version += 1
        self._send("layout", self.layout_version)

    def _reseed(self) -> None:
        if self._seeding is not None and not self._seeding.done():
            self._seed_again = True  # once more when this one ends: it may predate the event
            return
        self._seeding = asyncio.get_running_loop().create_task(self._seed(), name="web-seed")

    async def _seed(self) -> None:
        while True:
            self._seed_again = False
            started = time.monotonic()
            try:
                await self._seed_once(started)
            except Exception as exc:  # the daemon's view can fail (a reload); next time
                log.warning("web_seed_failed", error=repr(exc))
            if not self._seed_again:
                return

    async def _seed_once(self, started: float) -> None:
        if not self.source.ready():
            return
        layers = await self.source.layers()
        built = await asyncio.to_thread(self.source.history().built_at)
        status = await self.source.status()
        changed = []
        for entry in layers:
            row = self.board.rows.get(entry["layer"])
            # An event newer than this view already said better.
            if row is None or self._touched.get(row.layer, 0.0) > started:
                continue
            before = node_of(row)
            row.state = entry.get("state") or "unknown"
            row.builder, row.since = entry.get("builder"), entry.get("since")
            row.build_id = entry.get("build_id")
            row.error = first_line(entry.get("error") or
                                   (entry.get("why") if row.state == "stale" else None)) or None
            row.digest = entry.get("digest")
            row.finished_at = built.get(row.layer, row.finished_at)
            if node_of(row) != before:
                changed.append(node_of(row))
        upstreams = {name: upstream_value(up.get("tag"), str(up["digest"]))
                     for name, up in (status.get("upstreams") or {}).items() if up.get("digest")}
        if upstreams != self.board.upstreams:  # the picture shows the values in use
            self.board.upstreams = upstreams
            self.layout_version += 1
            self._send("layout", self.layout_version)
        self.seeded.set()
        if changed:
            self._send("nodes", changed)

    # -- browsers ---------------------------------------------------------------

    def _send(self, kind: str, data: Any) -> None:
        for browser in list(self._browsers):
            try:
                browser.put_nowait((kind, data))
            except asyncio.QueueFull:
                # A page that stopped reading loses its stream (it reconnects), not our memory.
                self._browsers.discard(browser)
                with contextlib.suppress(asyncio.QueueFull):
                    browser.put_nowait(None)

    @contextlib.asynccontextmanager
    async def follow(self, *, nodes: bool = True
                     ) -> AsyncIterator[asyncio.Queue[tuple[str, Any] | None]]:
        """A browser's stream: every node as it stands now, then each change."""
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(BROWSER_BACKLOG)
        if nodes:
            queue.put_nowait(("nodes", [node_of(row) for row in self.board.rows.values()]))
        self._browsers.add(queue)
        try:
            yield queue
        finally:
            self._browsers.discard(queue)

    def close(self) -> None:
        for browser in list(self._browsers):
            with contextlib.suppress(asyncio.QueueFull):
                browser.put_nowait(None)
        self._browsers.clear()
