"""Webhook deliveries, kept until delivered: at least once, across restarts."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.build.state.db import AsyncDatabase, Database, off_loop
from orchestrator.build.state.history import rows


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, url: str, event: str, body: str) -> int:
        now = time.time()
        cursor = self.db.conn.execute("INSERT INTO notifications (url, event, body, next_at, "
                                      "created_at) VALUES (?, ?, ?, ?, ?)",
                                      (url, event, body, now, now))
        return int(cursor.lastrowid or 0)

    def due(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        return rows(self.db.conn.execute(
            "SELECT * FROM notifications WHERE delivered_at IS NULL AND next_at <= ? "
            "ORDER BY id LIMIT ?", (now, limit)))

    def next_at(self) -> float | None:
        row = self.db.conn.execute("SELECT min(next_at) FROM notifications WHERE delivered_at "
                                   "IS NULL").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def delivered(self, ident: int) -> None:
        self.db.conn.execute("UPDATE notifications SET delivered_at = ?, attempts = attempts + 1 "
                             "WHERE id = ?", (time.time(), ident))

    def failed(self, ident: int, next_at: float, error: str) -> None:
        self.db.conn.execute("UPDATE notifications SET attempts = attempts + 1, next_at = ?, "
                             "last_error = ? WHERE id = ?", (next_at, error[:500], ident))

    def prune(self, cutoff: float) -> int:
        return self.db.conn.execute("DELETE FROM notifications WHERE delivered_at < ?",
                                    (cutoff,)).rowcount


class AsyncOutbox:
    def __init__(self, part: Outbox, adb: AsyncDatabase) -> None:
        self.part, self.adb = part, adb

    add = off_loop(Outbox.add)
    due = off_loop(Outbox.due)
    next_at = off_loop(Outbox.next_at)
    delivered = off_loop(Outbox.delivered)
    failed = off_loop(Outbox.failed)
    prune = off_loop(Outbox.prune)
