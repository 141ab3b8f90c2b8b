"""Each upstream's last seen value (tag, digest): a restart triggers nothing, and
an upstream that cannot be reached stands at its last known value."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.build.state.db import AsyncDatabase, Database, off_loop
from orchestrator.build.state.history import rows


class UpstreamValues:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, name: str) -> dict[str, Any] | None:
        found = rows(self.db.read.execute("SELECT * FROM upstreams WHERE name = ?", (name,)))
        return found[0] if found else None

    def save(self, name: str, tag: str | None, digest: str, ref: str, changed: bool) -> None:
        now = time.time()
        self.db.conn.execute(
                "INSERT INTO upstreams VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "tag = excluded.tag, digest = excluded.digest, ref = excluded.ref, "
                "checked_at = excluded.checked_at, "
                "changed_at = CASE WHEN ? THEN excluded.changed_at ELSE changed_at END",
                (name, tag, digest, ref, now, now, int(changed)),
            )


class AsyncUpstreamValues:
    def __init__(self, part: UpstreamValues, adb: AsyncDatabase) -> None:
        self.part, self.adb = part, adb

    get = off_loop(UpstreamValues.get)
    save = off_loop(UpstreamValues.save)
