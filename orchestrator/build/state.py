"""Durable state in SQLite (WAL): what each layer was last built from, and every build.

Each write is one transaction, so a crash or kill -9 leaves either the old or
the new row, never half of one. A database that cannot be opened is moved
aside and replaced, because the registry still holds every image: a fresh
state costs re-planning, not rebuilding.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.model import FileEntry, Inputs

SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    layer       TEXT PRIMARY KEY,
    build_key   TEXT NOT NULL,
    digest      TEXT NOT NULL,
    ref         TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    built_at    REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id          TEXT PRIMARY KEY,
    layer       TEXT NOT NULL,
    build_key   TEXT,
    reason      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    digest      TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    log_path    TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS builds_by_layer ON builds (layer, started_at);
CREATE TABLE IF NOT EXISTS queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    layer       TEXT NOT NULL,
    force       INTEGER NOT NULL,
    cause       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    taken       INTEGER NOT NULL DEFAULT 0   -- 1 while a run is serving it
);
CREATE TABLE IF NOT EXISTS upstreams (
    name        TEXT PRIMARY KEY,
    tag         TEXT,
    digest      TEXT NOT NULL,
    ref         TEXT NOT NULL,
    checked_at  REAL NOT NULL,
    changed_at  REAL NOT NULL
);
"""
# Columns added after the first release: (table, column, declaration).
MIGRATIONS = [
    ("builds", "cause", "TEXT"),
    ("builds", "request_id", "TEXT"),
    ("builds", "builder", "TEXT"),
]


@dataclass(frozen=True)
class LayerRecord:
    layer: str
    build_key: str
    digest: str
    ref: str
    inputs: Inputs
    built_at: float  # last time an image was actually built (for rebuild.every)


def inputs_to_json(inputs: Inputs) -> str:
    return json.dumps({
        "dockerfile": inputs.dockerfile,
        "files": [[e.path, e.mode, e.digest] for e in inputs.files],
        "args": [list(a) for a in inputs.args],
        "parent_digest": inputs.parent_digest,
    }, separators=(",", ":"))


def inputs_from_json(text: str) -> Inputs:
    data: dict[str, Any] = json.loads(text)
    return Inputs(
        dockerfile=data["dockerfile"],
        files=tuple(FileEntry(p, m, d) for p, m, d in data["files"]),
        args=tuple((k, v) for k, v in data["args"]),
        parent_digest=data["parent_digest"],
    )


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError:
            self.moved_aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.rename(self.moved_aside)
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        # Autocommit, with explicit `with self._tx():` transactions where several
        # statements must land together.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            for table, column, decl in MIGRATIONS:
                names = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in names:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            db.execute("SELECT count(*) FROM layers").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction (the connection is in autocommit mode otherwise)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def layer(self, layer: str) -> LayerRecord | None:
        row = self._db.execute(
            "SELECT layer, build_key, digest, ref, inputs, built_at FROM layers WHERE layer = ?",
            (layer,),
        ).fetchone()
        if row is None:
            return None
        return LayerRecord(row[0], row[1], row[2], row[3], inputs_from_json(row[4]), row[5])

    def layers(self) -> dict[str, LayerRecord]:
        rows = self._db.execute(
            "SELECT layer, build_key, digest, ref, inputs, built_at FROM layers").fetchall()
        return {r[0]: LayerRecord(r[0], r[1], r[2], r[3], inputs_from_json(r[4]), r[5])
                for r in rows}

    def save_layer(self, record: LayerRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (record.layer, record.build_key, record.digest, record.ref,
             inputs_to_json(record.inputs), record.built_at, time.time()),
        )

    def start_build(self, build_id: str, layer: str, key: str | None, reason: str,
                    log_path: str | None, *, cause: str | None = None,
                    request_id: str | None = None, builder: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO builds (id, layer, build_key, reason, outcome, started_at, log_path, "
            "cause, request_id, builder) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
            (build_id, layer, key, reason, time.time(), log_path, cause, request_id, builder),
        )

    def finish_build(self, build_id: str, outcome: str, digest: str | None = None,
                     error: str | None = None) -> None:
        self._db.execute(
            "UPDATE builds SET outcome = ?, digest = ?, error = ?, finished_at = ? WHERE id = ?",
            (outcome, digest, error, time.time(), build_id),
        )

    def builds(self, layer: str | None = None, limit: int = 50,
               request_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM builds"
        clauses, params = [], []
        if layer is not None:
            clauses.append("(layer = ? OR layer LIKE ?)")
            params += [layer, f"{layer}:%"]
        if request_id is not None:
            clauses.append("request_id = ?")
            params.append(request_id)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        cursor = self._db.execute(query + " ORDER BY started_at DESC LIMIT ?", (*params, limit))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def build(self, build_id: str) -> dict[str, Any] | None:
        cursor = self._db.execute("SELECT * FROM builds WHERE id = ?", (build_id,))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row, strict=True))

    def last_build(self, layer: str) -> dict[str, Any] | None:
        """The newest build of exactly this layer id (uses the (layer, started_at) index)."""
        cursor = self._db.execute("SELECT * FROM builds WHERE layer = ? "
                                  "ORDER BY started_at DESC LIMIT 1", (layer,))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row, strict=True)) if row else None

    def mark_interrupted(self) -> list[dict[str, Any]]:
        """Builds left 'running' by a crash: recorded as interrupted, never as built."""
        with self._tx():
            cursor = self._db.execute("SELECT * FROM builds WHERE outcome = 'running'")
            names = [c[0] for c in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            self._db.execute("UPDATE builds SET outcome = 'interrupted', finished_at = ? "
                             "WHERE outcome = 'running'", (time.time(),))
        return rows

    # -- the queue: what the daemon still has to do, surviving restarts ---------

    def enqueue(self, layer: str, *, force: bool, cause: str, request_id: str) -> str:
        """Queue a layer; returns the request id that will serve it. A layer
        already waiting absorbs the trigger (forced if either was); one being
        built gets exactly one follow-up entry."""
        with self._tx():
            row = self._db.execute("SELECT id, request_id FROM queue WHERE layer = ? AND "
                                   "taken = 0", (layer,)).fetchone()
            if row is not None:
                self._db.execute("UPDATE queue SET force = max(force, ?) WHERE id = ?",
                                 (int(force), row[0]))
                return str(row[1])
            self._db.execute("INSERT INTO queue (layer, force, cause, request_id, enqueued_at) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (layer, int(force), cause, request_id, time.time()))
            return request_id

    def queued(self, taken: bool | None = None) -> list[dict[str, Any]]:
        clause = "" if taken is None else f" WHERE taken = {int(taken)}"
        cursor = self._db.execute(f"SELECT * FROM queue{clause} ORDER BY id")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def take_queue(self) -> list[dict[str, Any]]:
        """Everything waiting, now marked as served by the run about to start."""
        with self._tx():
            rows = self.queued(taken=False)
            self._db.execute("UPDATE queue SET taken = 1 WHERE taken = 0")
        return rows

    def finish_queue(self, ids: list[int]) -> None:
        self._db.executemany("DELETE FROM queue WHERE id = ?", [(i,) for i in ids])

    def requeue_taken(self) -> int:
        """After a crash: what a dead run was serving waits again (merged with
        any newer entry for the same layer)."""
        with self._tx():
            rows = self.queued(taken=True)
            for row in rows:
                waiting = self._db.execute("SELECT id FROM queue WHERE layer = ? AND taken = 0",
                                           (row["layer"],)).fetchone()
                if waiting is None:
                    self._db.execute("UPDATE queue SET taken = 0 WHERE id = ?", (row["id"],))
                else:
                    self._db.execute("UPDATE queue SET force = max(force, ?) WHERE id = ?",
                                     (row["force"], waiting[0]))
                    self._db.execute("DELETE FROM queue WHERE id = ?", (row["id"],))
        return len(rows)

    # -- upstream values last seen -------------------------------------------

    def upstream(self, name: str) -> dict[str, Any] | None:
        cursor = self._db.execute("SELECT * FROM upstreams WHERE name = ?", (name,))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row, strict=True)) if row else None

    def save_upstream(self, name: str, tag: str | None, digest: str, ref: str,
                      changed: bool) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO upstreams VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "tag = excluded.tag, digest = excluded.digest, ref = excluded.ref, "
            "checked_at = excluded.checked_at, "
            "changed_at = CASE WHEN ? THEN excluded.changed_at ELSE changed_at END",
            (name, tag, digest, ref, now, now, int(changed)),
        )


def prune_logs(logs: Path, cutoff: float, keep: set[str]) -> int:
    """Delete build logs last written before ``cutoff`` ([state] log_retention);
    never those of the build ids in ``keep`` (running builds)."""
    if not logs.is_dir():
        return 0
    removed = 0
    for path in logs.glob("*.log"):
        with contextlib.suppress(FileNotFoundError):
            if path.stem not in keep and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed
