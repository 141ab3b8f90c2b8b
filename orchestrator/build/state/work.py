"""The daemon's work queue and the requests it serves: what it still has to do,
surviving restarts.

Every trigger is a request with its own id that stays answerable until it is
done and after: what it asked, what happened. A layer waits in the queue once;
a trigger for a layer already waiting merges into its entry (force wins, every
request id kept).
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.build.state.db import AsyncDatabase, Database, off_loop
from orchestrator.build.state.history import rows


def _queue_row(row: dict[str, Any]) -> dict[str, Any]:
    row["requests"] = json.loads(row.get("requests") or "[]") or [row["request_id"]]
    return row


class WorkStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, layer: str, *, force: bool, cause: str, request_id: str,
            requests: list[str] | None = None) -> str:
        """Queue a layer; returns the request id of the entry that will serve it. A
        layer already waiting absorbs the trigger (forced if either was, every
        request id kept); one being built gets exactly one follow-up entry."""
        with self.db.transaction():
            return self._add(layer, force=force, cause=cause, request_id=request_id,
                             requests=requests)

    def _add(self, layer: str, *, force: bool, cause: str, request_id: str,
             requests: list[str] | None = None) -> str:
        merged = list(dict.fromkeys(requests or [request_id]))
        conn = self.db.conn
        row = conn.execute("SELECT id, request_id, requests FROM queue WHERE layer = ? "
                           "AND taken = 0", (layer,)).fetchone()
        if row is not None:
            known = json.loads(row[2] or "[]") or [row[1]]
            union = list(dict.fromkeys([*known, *merged]))
            conn.execute("UPDATE queue SET force = max(force, ?), requests = ? WHERE id = ?",
                         (int(force), json.dumps(union), row[0]))
            return str(row[1])
        conn.execute("INSERT INTO queue (layer, force, cause, request_id, enqueued_at, "
                     "requests) VALUES (?, ?, ?, ?, ?, ?)",
                     (layer, int(force), cause, merged[0], time.time(), json.dumps(merged)))
        return merged[0]

    def submit(self, request_id: str, layers: list[str], *, force: bool, cause: str) -> None:
        """A request and its layers' queue entries, in one transaction: a refused
        write (a full disk) leaves nothing half-queued, so it can be made again."""
        with self.db.transaction():
            self.add_request(request_id, layers, force=force, cause=cause)
            for layer in layers:
                self._add(layer, force=force, cause=cause, request_id=request_id)

    def entries(self, taken: bool | None = None) -> list[dict[str, Any]]:
        if taken is None:
            cursor = self.db.read.execute("SELECT * FROM queue ORDER BY id")
        else:
            cursor = self.db.read.execute("SELECT * FROM queue WHERE taken = ? ORDER BY id",
                                          (int(taken),))
        return [_queue_row(row) for row in rows(cursor)]

    def take(self) -> list[dict[str, Any]]:
        """Everything waiting, now marked as served by the run about to start."""
        with self.db.transaction():
            rows = self.entries(taken=False)
            self.db.conn.execute("UPDATE queue SET taken = 1 WHERE taken = 0")
            for request in {r for row in rows for r in row["requests"]}:
                self.db.conn.execute("UPDATE requests SET state = 'running' WHERE id = ? AND "
                                     "state = 'queued'", (request,))
        return rows

    def finish(self, ids: list[int]) -> None:
        with self.db.transaction():
            self.db.conn.executemany("DELETE FROM queue WHERE id = ?", [(i,) for i in ids])

    def requeue_taken(self, ids: list[int] | None = None) -> int:
        """Taken entries wait again (after a crash, or a run that was refused),
        merged with any newer entry for the same layer: force and request ids kept."""
        with self.db.transaction():
            rows = self.entries(taken=True)
            if ids is not None:
                rows = [row for row in rows if row["id"] in ids]
            for row in rows:
                waiting = self.db.conn.execute(
                    "SELECT id, requests, request_id FROM queue WHERE layer = ? AND taken = 0",
                    (row["layer"],)).fetchone()
                if waiting is None:
                    self.db.conn.execute("UPDATE queue SET taken = 0 WHERE id = ?", (row["id"],))
                    continue
                known = json.loads(waiting[1] or "[]") or [waiting[2]]
                union = list(dict.fromkeys([*row["requests"], *known]))
                self.db.conn.execute("UPDATE queue SET force = max(force, ?), requests = ? "
                                     "WHERE id = ?", (row["force"], json.dumps(union), waiting[0]))
                self.db.conn.execute("DELETE FROM queue WHERE id = ?", (row["id"],))
            for request in {r for row in rows for r in row["requests"]}:
                self.db.conn.execute("UPDATE requests SET state = 'queued' WHERE id = ? AND "
                                     "state = 'running'", (request,))
        return len(rows)

    def add_request(self, request_id: str, layers: list[str], *, force: bool,
                    cause: str) -> None:
        self.db.conn.execute("INSERT INTO requests (id, created_at, cause, force, layers, state) "
                             "VALUES (?, ?, ?, ?, ?, 'queued')",
                             (request_id, time.time(), cause, int(force), json.dumps(layers)))

    def record_results(self, results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
        """Add layer outcomes to requests: {request id: {layer: {"outcome": …,
        "build_id": …}}}. A request no queue entry serves any more is done.
        Returns the ids now done."""
        done = []
        with self.db.transaction():
            for request_id, outcomes in results.items():
                row = self.db.conn.execute("SELECT results FROM requests WHERE id = ?",
                                           (request_id,)).fetchone()
                if row is None:
                    continue
                merged = {**json.loads(row[0] or "{}"), **outcomes}
                self.db.conn.execute("UPDATE requests SET results = ? WHERE id = ?",
                                     (json.dumps(merged), request_id))
            for request_id in results:
                if self._request_pending(request_id):
                    continue
                changed = self.db.conn.execute(
                        "UPDATE requests SET state = 'done', finished_at = ? WHERE id = ? AND "
                        "state != 'done'", (time.time(), request_id)).rowcount
                if changed:
                    done.append(request_id)
        return done

    def _request_pending(self, request_id: str) -> bool:
        # Request ids are letters, digits and "-": no LIKE wildcard can occur.
        return self.db.conn.execute("SELECT 1 FROM queue WHERE requests LIKE ? LIMIT 1",
                                    (f'%"{request_id}"%',)).fetchone() is not None

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        found = rows(self.db.read.execute("SELECT * FROM requests WHERE id = ?", (request_id,)))
        if not found:
            return None
        row = found[0]
        row["layers"] = json.loads(row["layers"])
        row["results"] = json.loads(row["results"] or "{}")
        row["force"] = bool(row["force"])
        return row

    def prune_requests(self, cutoff: float) -> int:
        return self.db.conn.execute("DELETE FROM requests WHERE state = 'done' AND "
                                    "finished_at < ?", (cutoff,)).rowcount


class AsyncWorkStore:
    def __init__(self, part: WorkStore, adb: AsyncDatabase) -> None:
        self.part, self.adb = part, adb

    add = off_loop(WorkStore.add)
    submit = off_loop(WorkStore.submit)
    entries = off_loop(WorkStore.entries)
    take = off_loop(WorkStore.take)
    finish = off_loop(WorkStore.finish)
    requeue_taken = off_loop(WorkStore.requeue_taken)
    add_request = off_loop(WorkStore.add_request)
    record_results = off_loop(WorkStore.record_results)
    get_request = off_loop(WorkStore.get_request)
    prune_requests = off_loop(WorkStore.prune_requests)
