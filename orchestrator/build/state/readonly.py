"""Read-only questions about the past, asked of the state database for
pictures: each layer's last build, build durations over time, queue depth over
time. A connection of its own, opened read-only: it never writes, never takes
the writer's lock (WAL readers do not block the daemon) and does not create a
database that is not there."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    at: float
    value: float


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                 timeout=5.0)
        except sqlite3.Error:
            return []
        try:
            db.row_factory = sqlite3.Row
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:  # a database from before a table existed
            return []
        finally:
            db.close()

    def built_at(self) -> dict[str, float]:
        """layer -> when the image it stands on now was built."""
        return {row["layer"]: row["built_at"]
                for row in self._query("SELECT layer, built_at FROM layers")}

    def last_outcomes(self) -> dict[str, str]:
        """layer -> the outcome of its newest build."""
        rows = self._query(
            "SELECT b.layer, b.outcome FROM builds b JOIN (SELECT layer, max(started_at) AS s "
            "FROM builds GROUP BY layer) n ON b.layer = n.layer AND b.started_at = n.s")
        return {row["layer"]: row["outcome"] for row in rows}

    def upstreams(self) -> dict[str, tuple[str | None, str]]:
        """name -> (tag, digest) last seen."""
        return {row["name"]: (row["tag"], row["digest"])
                for row in self._query("SELECT name, tag, digest FROM upstreams")}

    def durations(self, since: float, layer: str | None = None
                  ) -> dict[str, list[Sample]]:
        """layer -> (start, seconds) of each finished build since ``since``, oldest first."""
        sql = ("SELECT layer, started_at, finished_at - started_at AS took FROM builds "
               "WHERE finished_at IS NOT NULL AND started_at >= ? AND outcome = 'built'")
        params: tuple[Any, ...] = (since,)
        if layer is not None:
            sql += " AND layer = ?"
            params += (layer,)
        out: dict[str, list[Sample]] = {}
        for row in self._query(sql + " ORDER BY started_at", params):
            out.setdefault(row["layer"], []).append(Sample(row["started_at"], row["took"]))
        return out

    def queue_depth(self, since: float, now: float) -> list[Sample]:
        """Layers asked for and not yet done, as a step line: from each request's
        creation to its end (requests are kept for a week after they end)."""
        rows = self._query("SELECT created_at, finished_at, layers FROM requests "
                           "WHERE finished_at IS NULL OR finished_at >= ?", (since,))
        steps: list[tuple[float, int]] = []
        for row in rows:
            try:
                size = len(json.loads(row["layers"]))
            except ValueError:
                size = 1
            steps.append((row["created_at"], size))
            if row["finished_at"] is not None:
                steps.append((row["finished_at"], -size))
        if not steps:
            return []
        # From the first change in the window: a quiet fortnight is not worth a flat line.
        since = max(since, min(at for at, _ in steps) - 60.0)
        depth = sum(change for at, change in steps if at < since)
        out = [Sample(since, float(depth))]
        for at, change in sorted(step for step in steps if step[0] >= since):
            depth += change
            if out[-1].at == at:
                out[-1] = Sample(at, float(depth))
            else:
                out.append(Sample(at, float(depth)))
        out.append(Sample(max(now, out[-1].at), float(depth)))
        return out
