"""Webhook deliveries, kept until delivered or given up: at least once, across
restarts. A row belongs to a ``[[notify]]`` target by identity (its name, else
its URL; never its secret); rows from before targets had one stand for the
target whose identity is their URL. A row is pending until ``delivered_at`` or
``given_up_at`` is set; a target's rows are sent oldest first, one at a time."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from orchestrator.build.state.db import AsyncDatabase, Database, off_loop
from orchestrator.build.state.history import rows

_PENDING_FOR = "delivered_at IS NULL AND given_up_at IS NULL AND coalesce(target, url) = ?"


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, targets: Sequence[tuple[str, str]], event: str, body: str,
            max_pending: int) -> dict[str, int]:
        """One event's deliveries, one row per (target identity, url), in one
        transaction. A target with more than ``max_pending`` rows waiting loses its
        oldest: returns how many each target lost."""
        now = time.time()
        lost: dict[str, int] = {}
        with self.db.transaction():
            conn = self.db.conn
            for target, url in targets:
                conn.execute("INSERT INTO notifications (url, target, event, body, next_at, "
                             "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (url, target, event, body, now, now))
                lost[target] = conn.execute(
                    "UPDATE notifications SET given_up_at = ?, last_error = 'queue full' "
                    "WHERE id IN (SELECT id FROM notifications WHERE " + _PENDING_FOR +
                    " ORDER BY id DESC LIMIT -1 OFFSET ?)", (now, target, max_pending)).rowcount
        return lost

    def next(self, target: str) -> tuple[dict[str, Any] | None, int]:
        """A target's oldest pending delivery, and how many are pending."""
        found = rows(self.db.read.execute("SELECT * FROM notifications WHERE " + _PENDING_FOR +
                                          " ORDER BY id LIMIT 1", (target,)))
        count = self.db.read.execute("SELECT count(*) FROM notifications WHERE " +
                                     _PENDING_FOR, (target,)).fetchone()[0]
        return (found[0] if found else None), int(count)

    def delivered(self, ident: int) -> None:
        self.db.conn.execute("UPDATE notifications SET delivered_at = ?, attempts = attempts + 1 "
                             "WHERE id = ?", (time.time(), ident))

    def failed(self, ident: int, next_at: float, error: str) -> None:
        self.db.conn.execute("UPDATE notifications SET attempts = attempts + 1, next_at = ?, "
                             "last_error = ? WHERE id = ?", (next_at, error[:500], ident))

    def given_up(self, ident: int, error: str) -> None:
        self.db.conn.execute("UPDATE notifications SET given_up_at = ?, last_error = ? "
                             "WHERE id = ?", (time.time(), error[:500], ident))

    def drop(self, keep: Collection[str], error: str) -> dict[str, int]:
        """Give up the pending rows of every target not in ``keep``: how many, by target."""
        marks = ", ".join("?" * len(keep))
        where = ("delivered_at IS NULL AND given_up_at IS NULL AND coalesce(target, url) "
                 f"NOT IN ({marks})")
        with self.db.transaction():
            counts = {str(t): int(n) for t, n in self.db.conn.execute(
                f"SELECT coalesce(target, url), count(*) FROM notifications WHERE {where} "
                "GROUP BY 1", tuple(keep))}
            self.db.conn.execute(f"UPDATE notifications SET given_up_at = ?, last_error = ? "
                                 f"WHERE {where}", (time.time(), error[:500], *keep))
        return counts

    def prune(self, cutoff: float) -> int:
        return self.db.conn.execute("DELETE FROM notifications WHERE delivered_at < ? OR "
                                    "given_up_at < ?", (cutoff, cutoff)).rowcount


class AsyncOutbox:
    def __init__(self, part: Outbox, adb: AsyncDatabase) -> None:
        self.part, self.adb = part, adb

    add = off_loop(Outbox.add)
    next = off_loop(Outbox.next)
    delivered = off_loop(Outbox.delivered)
    failed = off_loop(Outbox.failed)
    given_up = off_loop(Outbox.given_up)
    drop = off_loop(Outbox.drop)
    prune = off_loop(Outbox.prune)
