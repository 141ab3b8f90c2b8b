"""The live view of a run on a terminal: the hierarchy as a tree, redrawn in
place with rich, fed by the same event dicts the progress lines print.

Used by ``build`` and ``run --once`` on a terminal, and by ``status --watch``
against a daemon. The builder's last output line is read from the end of the
build's log file (its path comes with ``build_started``): the output is there
already, and a per-line event would push every compiler line through the
structured log, the webhooks and every ``/v1/events`` follower.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.core.runboard import Board, Row

REFRESH_S = 0.25
TAIL_BYTES = 4096
# Control sequences a builder writes for its own terminal (colours, cursor moves).
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")
STYLE = {"waiting": "dim", "queued": "cyan", "building": "bold yellow", "built": "green",
         "reused": "green", "up_to_date": "green", "failed": "bold red", "skipped": "dim",
         "cancelled": "magenta", "superseded": "dim", "deferred": "dim", "stale": "yellow",
         "unknown": "dim"}
MARK = {"waiting": "…", "queued": "○", "building": "●", "built": "✓", "reused": "✓",
        "up_to_date": "✓", "failed": "✗", "skipped": "-", "cancelled": "✗", "stale": "!"}
FOOTER_ORDER = ("building", "queued", "waiting", "built", "reused", "up_to_date", "stale",
                "failed", "skipped", "cancelled", "superseded", "deferred", "unknown")
FOOTER_WORDS = {"reused": "up to date", "up_to_date": "up to date"}
_DONE = frozenset({"built", "reused", "up_to_date", "skipped", "superseded", "deferred"})


def wanted(stream: IO[str]) -> bool:
    """A live view only where a person watches a terminal that can draw it."""
    if not stream.isatty():
        return False
    if os.environ.get("NO_COLOR"):
        return False
    return os.environ.get("TERM", "") != "dumb"


def last_output_line(path: str | None) -> str:
    """The newest non-blank line a builder wrote (our echo of its command line aside)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            tail = fh.read(TAIL_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
    # A carriage return redraws a line in place: its last state is what shows.
    for line in reversed(tail.splitlines()):
        line = _CONTROL.sub("", line.rsplit("\r", 1)[-1]).strip()
        if line and not line.startswith("$ "):
            return line
    return ""


def describe(row: Row, now: float) -> str:
    """One layer's state in words (colour is never the only sign)."""
    state = row.state
    if state == "building":
        elapsed = now - row.since if row.since else 0.0
        return f"building {clock(elapsed)} on {row.builder or '?'}"
    if state == "waiting":
        return f"waiting on {row.parent}"
    if state == "built":
        took = f" in {row.duration_s:.1f}s" if row.duration_s is not None else ""
        return f"built{took} on {row.builder or '?'}"
    if state in ("reused", "up_to_date"):
        return "up to date"
    if state == "failed":
        return f"FAILED: {row.error}" if row.error else "FAILED"
    if state in ("skipped", "stale", "superseded", "deferred"):
        return f"{state}: {row.error}" if row.error else state
    return state


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def tree_lines(board: Board) -> list[tuple[str, str, Row]]:
    """(label with tree guides, guide for a line under it, row), parents first."""
    rows = board.rows
    kids: dict[str | None, list[str]] = {}
    for row in rows.values():
        kids.setdefault(row.parent if row.parent in rows else None, []).append(row.layer)
    out: list[tuple[str, str, Row]] = []

    def walk(lid: str, prefix: str, last: bool, top: bool) -> None:
        below = kids.get(lid, [])
        label = lid if top else f"{prefix}{'└── ' if last else '├── '}{lid}"
        child_prefix = "" if top else prefix + ("    " if last else "│   ")
        out.append((label, child_prefix + ("│" if below else ""), rows[lid]))
        for i, child in enumerate(below):
            walk(child, child_prefix, i == len(below) - 1, False)

    for root in kids.get(None, []):
        walk(root, "", True, True)
    return out


class LiveView:
    """A callable event sink (``on_event``) that redraws the board in place.

    ``head`` and ``tail`` give extra lines above and below the tree (the
    daemon's status line, its engines); ``clock`` is injectable for tests."""

    def __init__(self, board: Board, console: Console, *, title: str = "",
                 head: Callable[[], list[str]] | None = None,
                 tail: Callable[[], list[str]] | None = None,
                 clock: Callable[[], float] = time.time, refresh_s: float = REFRESH_S) -> None:
        self.board = board
        self.console = console
        self.title = title
        self.head = head or (lambda: [])
        self.tail = tail or (lambda: [])
        self.clock = clock
        self.refresh_s = refresh_s
        self._live: Live | None = None

    # -- feeding --------------------------------------------------------------

    def __call__(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        if event == "upstreams_resolved":
            self.board.upstreams.update(fields.get("upstreams") or {})
            return
        self.board.apply(event, fields, self.clock())

    # -- drawing --------------------------------------------------------------

    def __enter__(self) -> LiveView:
        # Redrawn from our own loop (heartbeat), never from rich's thread: the
        # board is only read where it is written.
        self._live = Live(console=self.console, auto_refresh=False, transient=False,
                          get_renderable=self.render, vertical_overflow="crop")
        self._live.start(refresh=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Draw the last frame and give the terminal back (cursor shown, no half line)."""
        live, self._live = self._live, None
        if live is not None:
            live.refresh()
            live.stop()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    async def heartbeat(self) -> None:
        """Until cancelled: redraw, so elapsed times and output lines move."""
        while True:
            self.refresh()
            await asyncio.sleep(self.refresh_s)

    def render(self) -> RenderableType:
        now = self.clock()
        width = max(self.console.size.width, 20)
        height = self.console.size.height
        lines = tree_lines(self.board)
        head = self.head()
        extra = [*head, ""] if head else []
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True, overflow="ellipsis", max_width=max(10, width // 2))
        table.add_column(no_wrap=True, overflow="ellipsis")
        hidden = 0
        # Room for the head, the upstream line and the footer; beyond that the
        # finished rows give way to the ones still moving.
        room = height - len(extra) - 4 - len(self.board.building())
        if len(lines) > room > 0:
            keep = [entry for entry in lines if entry[2].state not in _DONE]
            hidden = len(lines) - len(keep)
            lines = keep
        for label, guide, row in lines:
            style = STYLE.get(row.state, "")
            state = Text(f"{MARK.get(row.state, ' ')} {describe(row, now)}", style=style)
            table.add_row(Text(label, style="bold" if row.state == "building" else ""), state)
            if row.state == "building":
                said = last_output_line(row.log)
                if said:
                    table.add_row(Text(guide, style="dim"), Text(f"  > {said}", style="dim"))
        parts: list[RenderableType] = [Text(line) for line in extra]
        if self.title:
            parts.append(Text(self.title, style="bold"))
        parts.append(table)
        if hidden:
            parts.append(Text(f"… {hidden} finished layers not shown", style="dim"))
        if self.board.upstreams:
            used = ", ".join(f"{name} {value}" for name, value in
                             sorted(self.board.upstreams.items()))
            parts.append(Text(f"upstreams: {used}", no_wrap=True, overflow="ellipsis"))
        parts.extend(Text(line) for line in self.tail())
        parts.append(self.footer(now))
        return Group(*parts)

    def footer(self, now: float) -> Text:
        counts = self.board.counts()
        merged: dict[str, int] = {}
        for state in FOOTER_ORDER:
            if counts.get(state):
                word = FOOTER_WORDS.get(state, state)
                merged[word] = merged.get(word, 0) + counts[state]
        text = f"{len(self.board.rows)} layers: " + ", ".join(
            f"{n} {word}" for word, n in merged.items())
        if self.board.started_at is not None:
            text += f" · {clock(now - self.board.started_at)} elapsed"
        return Text(text, style="bold")
