"""Where each layer of a hierarchy stands, kept up to date from the event dicts
the pipeline and the daemon publish (``build_started``, ``build_finished``,
``layer_up_to_date``, ``trigger_received``…). Pure: the terminal view and the
web page feed it and draw it, each in its own way.

A run's layers start ``waiting`` (on a parent that is in the run and not done)
or ``queued`` (their turn to be decided, or a free slot); a finished parent
moves its waiting children to queued, a failed or cancelled one skips them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.core import graph

# Done for this run: a layer in one of these states changes no more until the next.
FINISHED = frozenset({"built", "reused", "failed", "skipped", "cancelled", "superseded",
                      "deferred", "up_to_date"})
# The daemon's view of a layer at rest (``GET /v1/layers``), merged with the run's words.
STATES = ("waiting", "queued", "building", "built", "reused", "failed", "skipped",
          "cancelled", "superseded", "deferred", "stale", "up_to_date", "unknown")


@dataclass
class Row:
    """One layer as a view shows it."""

    layer: str
    parent: str | None
    upstream: str | None = None
    tags: tuple[str, ...] = ()
    state: str = "unknown"
    builder: str | None = None
    since: float | None = None  # building since (epoch seconds)
    duration_s: float | None = None  # the last build's, once finished
    finished_at: float | None = None  # when the last build (or reuse) finished
    error: str | None = None  # first error line of a failure, or why skipped / stale
    build_id: str | None = None
    log: str | None = None  # the running build's log file
    digest: str | None = None


@dataclass
class Board:
    rows: dict[str, Row]
    upstreams: dict[str, str] = field(default_factory=dict)  # name -> value in use
    started_at: float | None = None  # the run's start, for the footer's clock

    @classmethod
    def of(cls, layers: Iterable[tuple[str, str | None, str | None, tuple[str, ...]]]
           ) -> Board:
        """From ``(id, parent, upstream, tags)`` in the catalog's order."""
        return cls({lid: Row(lid, parent, upstream, tuple(tags))
                    for lid, parent, upstream, tags in layers})

    # -- runs -----------------------------------------------------------------

    def start_run(self, order: Collection[str], now: float) -> set[str]:
        """The layers of a run, before any of them is decided."""
        self.started_at = now
        in_run = set(order)
        for lid in order:
            row = self.rows.get(lid)
            if row is None:
                continue
            row.state = "waiting" if row.parent in in_run else "queued"
            row.error = row.builder = row.since = row.log = None
        return in_run & set(self.rows)

    def settle(self, outcomes: Mapping[str, str], whys: Mapping[str, str | None]) -> set[str]:
        """A run's final word per layer (what no event said, as a skip or a reuse)."""
        changed = set()
        for lid, outcome in outcomes.items():
            row = self.rows.get(lid)
            if row is None:
                continue
            state = outcome if outcome in STATES else "unknown"
            if row.state != state:
                row.state = state
                changed.add(lid)
            if state in ("skipped", "failed", "superseded", "deferred") and whys.get(lid) \
                    and not row.error:
                row.error = first_line(whys[lid])
                changed.add(lid)
        return changed

    # -- events ---------------------------------------------------------------

    def apply(self, event: str, fields: Mapping[str, Any], now: float) -> set[str]:
        """One event; returns the layers whose row changed."""
        if event == "trigger_received":
            return self._queue(fields.get("layers") or ())
        lid = fields.get("layer")
        row = self.rows.get(lid) if isinstance(lid, str) else None
        if row is None:
            return set()
        if event == "build_started":
            row.state, row.builder, row.since = "building", fields.get("builder"), now
            row.build_id, row.log, row.error = fields.get("build_id"), fields.get("log"), None
            return {row.layer}
        if event == "layer_up_to_date":
            row.state, row.digest, row.error = "reused", fields.get("digest"), None
            return {row.layer} | self._release(row.layer)
        if event == "build_finished":
            return self._finished(row, fields, now)
        return set()

    def _finished(self, row: Row, fields: Mapping[str, Any], now: float) -> set[str]:
        outcome = str(fields.get("outcome") or "failed")
        row.state = outcome if outcome in STATES else "failed"
        row.duration_s = fields.get("duration_s")
        row.finished_at, row.since, row.log = now, None, None
        row.builder = fields.get("builder") or row.builder
        if outcome == "built":
            row.digest, row.error = fields.get("digest"), None
            return {row.layer} | self._release(row.layer)
        row.error = first_line(str(fields.get("error") or "")) or None
        verb = "failed" if outcome == "failed" else "was " + outcome
        return {row.layer} | self._skip_below(row.layer, f"parent {row.layer} {verb}")

    def _queue(self, layers: Iterable[Any]) -> set[str]:
        changed = set()
        for lid in layers:
            row = self.rows.get(str(lid))
            if row is not None and row.state != "building":
                row.state, row.error = "queued", None
                changed.add(row.layer)
        return changed

    def _release(self, lid: str) -> set[str]:
        changed = set()
        for row in self.rows.values():
            if row.parent == lid and row.state == "waiting":
                row.state = "queued"
                changed.add(row.layer)
        return changed

    def _skip_below(self, lid: str, why: str) -> set[str]:
        parents = {r.layer: r.parent for r in self.rows.values()}
        changed = set()
        for below in graph.descendants(parents, [lid]) - {lid}:
            row = self.rows[below]
            if row.state in ("waiting", "queued"):
                row.state, row.error = "skipped", why
                changed.add(below)
        return changed

    # -- reading --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            out[row.state] = out.get(row.state, 0) + 1
        return out

    def building(self) -> list[Row]:
        return [row for row in self.rows.values() if row.state == "building"]


def event_time(stamp: Any, default: float) -> float:
    """An event's time in epoch seconds: the bus stamps ISO-8601 UTC
    (``2026-12-08T02:34:40.125Z``, as the log lines carry it); a number is taken
    as epoch seconds. Anything else is ``default``."""
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return float(stamp)
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return default
    return default


def first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def upstream_value(tag: str | None, digest: str) -> str:
    """An upstream's value in use, short: ``3.20 @ sha256:7483f15122eb``."""
    algo, _, hexa = digest.partition(":")
    short = f"{algo}:{hexa[:12]}" if hexa else digest[:12]
    return f"{tag} @ {short}" if tag else short
