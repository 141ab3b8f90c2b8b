"""The live view wired to its three sources: a one-shot ``build`` (the
pipeline's ``on_event``), ``run --once`` (the daemon's event bus, in process)
and ``status --watch`` (a daemon's ``/v1/status``, ``/v1/layers`` and
``/v1/events`` over its socket)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from rich.console import Console

from orchestrator.build.results import RunReport
from orchestrator.build.scope import targets
from orchestrator.catalog.layers import select
from orchestrator.cli.live import LiveView
from orchestrator.core.model import Catalog
from orchestrator.core.runboard import Board, event_time, upstream_value

if TYPE_CHECKING:
    from orchestrator.cli.client import Client
    from orchestrator.service.daemon import Daemon

RESEED_S = 5.0  # status --watch: the daemon's own view, now and then, over the events


def board_of(catalog: Catalog, order: list[str]) -> Board:
    wanted = set(order)
    return Board.of((lid, layer.parent, layer.upstream, layer.tags)
                    for lid, layer in catalog.layers.items() if lid in wanted)


# -- a one-shot build -----------------------------------------------------------


def build_live(catalog: Catalog, names: list[str],
               run: Callable[..., Coroutine[Any, Any, RunReport]],
               run_interruptible: Callable[[Any, Any], RunReport]) -> RunReport:
    """``build`` on a terminal: the tree on stderr while it runs; the caller
    prints the summary on stdout, as without a terminal."""
    order = targets(catalog, select(catalog, names) if names else None)
    board = board_of(catalog, order)
    board.start_run(order, time.time())
    with LiveView(board, Console(stderr=True)) as view:
        return run_interruptible(run(on_event=view), view)


# -- run --once -------------------------------------------------------------------


class _CurrentStdout:
    """Log lines go to whatever sys.stdout is now: while the view draws, rich's
    proxy, which prints them above the tree."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return True


def run_once_live(daemon: Daemon, *, verbose: bool) -> int:
    """``run --once`` on a terminal: the tree of each run; warnings and errors
    from the log above it (everything with ``-v``). The exit code is the daemon's."""
    from orchestrator.service import logs

    logs.configure(_CurrentStdout(), logging.DEBUG if verbose else logging.WARNING)  # type: ignore[arg-type]
    view = LiveView(Board({}), Console(), head=lambda: [f"orchestrator run --once: "
                                                        f"{daemon.phase}"])

    def on_bus(event: str, fields: dict[str, Any], level: str = "info") -> None:
        now = time.time()
        if event == "run_started":
            order = list((daemon.runs.current_run or {}).get("layers") or [])
            view.board = board_of(daemon.loaded.catalog, order)
            view.board.start_run(order, now)
            view.board.upstreams = {name: upstream_value(up.tag, up.digest)
                                    for name, up in daemon.upstreams.values.items()}
        elif event == "run_finished":
            results = daemon.runs.last_results
            view.board.settle({lid: r["outcome"] for lid, r in results.items()},
                              {lid: r.get("why") for lid, r in results.items()})
        else:
            view(event, fields, level)

    daemon.bus.listeners.append(on_bus)

    async def main() -> int:
        with view:
            beat = asyncio.create_task(view.heartbeat())
            try:
                return await daemon.run()
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat

    code = asyncio.run(main())
    counts = view.board.counts()
    print(f"{counts.get('built', 0)} built, "
          f"{counts.get('reused', 0) + counts.get('up_to_date', 0)} up to date, "
          f"{counts.get('failed', 0)} failed, {counts.get('skipped', 0)} skipped")
    return code


# -- status --watch ---------------------------------------------------------------


def board_from_layers(layers: list[dict[str, Any]], board: Board | None = None) -> Board:
    """The daemon's layers view as a board; rows of ``board`` keep what only
    the events said (a running build's log file)."""
    fresh = Board.of((entry["layer"], entry.get("parent"), entry.get("upstream"),
                      tuple(entry.get("tags") or ())) for entry in layers)
    for entry in layers:
        row = fresh.rows[entry["layer"]]
        row.state = entry.get("state") or "unknown"
        row.builder, row.since = entry.get("builder"), entry.get("since")
        row.build_id = entry.get("build_id")
        row.error = entry.get("error") or (entry.get("why") if row.state == "stale" else None)
        old = board.rows.get(row.layer) if board else None
        if old is not None and old.build_id == row.build_id and row.state == "building":
            row.log = old.log
    if board is not None:
        fresh.upstreams = board.upstreams
    return fresh


class StatusWatch:
    """Keeps a board in step with a daemon: its views at start and every
    RESEED_S (and after each run), its events in between."""

    def __init__(self, client: Client, view: LiveView) -> None:
        self.client = client
        self.view = view
        self.status: dict[str, Any] | None = None
        self.problem: str | None = None
        self._reseeds: set[asyncio.Task[None]] = set()

    async def reseed(self) -> None:
        from orchestrator.cli.client import NoDaemon

        try:
            code, status = await self.client.call("GET", "/v1/status")
            layers_code, layers = await self.client.call("GET", "/v1/layers")
        except NoDaemon as exc:
            self.problem = str(exc)
            return
        if code != 200 or layers_code != 200:
            bad = status if code != 200 else layers
            self.problem = str(bad.get("message", bad) if isinstance(bad, dict) else bad)
            return
        self.problem, self.status = None, status
        board = board_from_layers(layers["layers"], self.view.board)
        board.upstreams = {name: upstream_value(up.get("tag"), str(up.get("digest") or ""))
                           for name, up in (status.get("upstreams") or {}).items()
                           if up.get("digest")}
        board.started_at = (status.get("run") or {}).get("started")
        for row in board.building():
            if row.log is None and row.build_id:
                found, build = await self.client.call("GET", f"/v1/builds/{row.build_id}")
                if found == 200 and isinstance(build, dict):
                    row.log = build.get("log_path")
        self.view.board = board

    async def follow_events(self) -> None:
        """Apply the daemon's events as they come; reconnect when the stream ends."""
        import aiohttp

        while True:
            try:
                async with aiohttp.ClientSession(
                        connector=aiohttp.UnixConnector(path=str(self.client.socket_path)),
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as session, \
                        session.get("http://orchestrator/v1/events") as resp:
                    async for line in resp.content:
                        self.on_record(json.loads(line))
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                self.problem = f"event stream: {exc}"
            await asyncio.sleep(1)

    def on_record(self, record: dict[str, Any]) -> None:
        event = str(record.pop("event", ""))
        if event == "run_started":
            self.view.board.started_at = event_time(record.get("timestamp"), time.time())
        elif event in ("run_finished", "reloaded", "catalog_reloaded"):
            self.view.board.started_at = None
            task = asyncio.get_running_loop().create_task(self.reseed())
            self._reseeds.add(task)
            task.add_done_callback(self._reseeds.discard)
        else:
            self.view(event, record)

    def head(self) -> list[str]:
        from orchestrator.cli.client import status_head

        if self.problem is not None:
            return [f"orchestrator: {self.problem}"]
        return [status_head(self.status)] if self.status else []

    def tail(self) -> list[str]:
        from orchestrator.cli.client import status_tail

        return status_tail(self.status) if self.status else []


async def watch_status(client: Client) -> None:
    """``status --watch``: until Ctrl-C."""
    view = LiveView(Board({}), Console())
    watch = StatusWatch(client, view)
    view.head, view.tail = watch.head, watch.tail
    await watch.reseed()
    with view:
        tasks = [asyncio.create_task(view.heartbeat()),
                 asyncio.create_task(watch.follow_events())]
        try:
            while True:
                await asyncio.sleep(RESEED_S)
                await watch.reseed()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
