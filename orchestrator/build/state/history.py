"""Every build: why it ran, on which engine, how it ended and where its time went."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from orchestrator.build.state.db import AsyncDatabase, Database, off_loop
from orchestrator.build.state.records import COMPACT, SORTED


def rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("steps"):
        row["steps"] = json.loads(row["steps"])
    return row


class BuildHistory:
    def __init__(self, db: Database) -> None:
        self.db = db

    def start(self, build_id: str, layer: str, key: str | None, reason: str,
              log_path: str | None, *, cause: str | None = None,
              request_id: str | None = None, builder: str | None = None,
              base_ref: str | None = None, platform: str | None = None) -> None:
        """Record a build as running (before its engine starts: crash recovery
        needs to know what was running and what it stood on)."""
        self.db.conn.execute(
            "INSERT INTO builds (id, layer, build_key, reason, outcome, started_at, log_path, "
            "cause, request_id, builder, base_ref, platform) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
            (build_id, layer, key, reason, time.time(), log_path, cause, request_id, builder,
             base_ref, platform),
        )

    def finish(self, build_id: str, outcome: str, digest: str | None = None,
               error: str | None = None,
               platform_digests: Mapping[str, str] | None = None,
               steps: Mapping[str, float] | None = None) -> None:
        self.db.conn.execute(
            "UPDATE builds SET outcome = ?, digest = ?, error = ?, finished_at = ?, "
            "platform_digests = ?, steps = ? WHERE id = ?",
            (outcome, digest, error, time.time(),
             SORTED.encode(dict(platform_digests)) if platform_digests else None,
             COMPACT.encode(dict(steps)) if steps else None, build_id),
        )

    def builds(self, layer: str | None = None, limit: int = 50,
               request_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first. ``layer`` is a layer id or a folder name (all its variants);
        matched exactly, never as a pattern."""
        query = "SELECT * FROM builds"
        clauses, params = [], []
        if layer is not None:
            clauses.append("(layer = ? OR substr(layer, 1, ?) = ?)")
            params += [layer, len(layer) + 1, f"{layer}:"]
        if request_id is not None:
            clauses.append("request_id = ?")
            params.append(request_id)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        return [_decoded(row) for row in rows(self.db.read.execute(
            query + " ORDER BY started_at DESC LIMIT ?", (*params, limit)))]

    def get(self, build_id: str) -> dict[str, Any] | None:
        found = rows(self.db.read.execute("SELECT * FROM builds WHERE id = ?", (build_id,)))
        return _decoded(found[0]) if found else None

    def last(self, layer: str) -> dict[str, Any] | None:
        """The newest build of exactly this layer id (uses the (layer, started_at) index)."""
        found = rows(self.db.read.execute("SELECT * FROM builds WHERE layer = ? "
                                          "ORDER BY started_at DESC LIMIT 1", (layer,)))
        return _decoded(found[0]) if found else None

    def last_of(self, layers: list[str]) -> dict[str, dict[str, Any]]:
        return {lid: row for lid in layers if (row := self.last(lid)) is not None}

    def durations(self, layers: list[str], limit: int = 5) -> dict[str, float]:
        """Each layer's expected build time: the median of its last ``limit``
        successful builds (what the scheduler ranks ready layers by). One query
        per 500 layers, over the (layer, started_at) index."""
        times: dict[str, list[float]] = {}
        for at in range(0, len(layers), 500):  # SQLite's old limit is 999 parameters
            chunk = layers[at:at + 500]
            marks = ",".join("?" * len(chunk))
            for lid, seconds in self.db.read.execute(
                    "SELECT layer, took FROM (SELECT layer, finished_at - started_at AS took, "
                    "row_number() OVER (PARTITION BY layer ORDER BY started_at DESC) AS n "
                    f"FROM builds WHERE layer IN ({marks}) AND outcome = 'built') "
                    "WHERE n <= ?", (*chunk, limit)):
                times.setdefault(lid, []).append(float(seconds))
        return {lid: sorted(found)[len(found) // 2] for lid, found in times.items()}

    def mark_interrupted(self) -> list[dict[str, Any]]:
        """Builds left 'running' by a crash: recorded as interrupted, never as built."""
        # Read first: nearly always there are none, and a write transaction
        # would cost every one-shot run a sync of the database.
        if self.db.read.execute("SELECT 1 FROM builds WHERE outcome = 'running' LIMIT 1") \
                .fetchone() is None:
            return []
        with self.db.transaction():
            found = rows(self.db.conn.execute("SELECT * FROM builds WHERE outcome = 'running'"))
            self.db.conn.execute("UPDATE builds SET outcome = 'interrupted', finished_at = ? "
                                 "WHERE outcome = 'running'", (time.time(),))
        return found


class AsyncBuildHistory:
    def __init__(self, part: BuildHistory, adb: AsyncDatabase) -> None:
        self.part, self.adb = part, adb

    start = off_loop(BuildHistory.start)
    finish = off_loop(BuildHistory.finish)
    builds = off_loop(BuildHistory.builds)
    get = off_loop(BuildHistory.get)
    last_of = off_loop(BuildHistory.last_of)
    durations = off_loop(BuildHistory.durations)
    mark_interrupted = off_loop(BuildHistory.mark_interrupted)
