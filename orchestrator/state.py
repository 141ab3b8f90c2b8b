"""Durable state in SQLite (WAL): what each layer was last built from, and every build.

Each write is one transaction, so a crash or kill -9 leaves either the old or
the new row, never half of one. A database that cannot be opened is moved
aside and replaced, because the registry still holds every image: a fresh
state costs re-planning, not rebuilding.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.model import FileEntry, Inputs

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
"""


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
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM layers").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

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
                    log_path: str | None) -> None:
        self._db.execute(
            "INSERT INTO builds (id, layer, build_key, reason, outcome, started_at, log_path) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?)",
            (build_id, layer, key, reason, time.time(), log_path),
        )

    def finish_build(self, build_id: str, outcome: str, digest: str | None = None,
                     error: str | None = None) -> None:
        self._db.execute(
            "UPDATE builds SET outcome = ?, digest = ?, error = ?, finished_at = ? WHERE id = ?",
            (outcome, digest, error, time.time(), build_id),
        )

    def builds(self, layer: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = "SELECT * FROM builds"
        params: tuple[Any, ...] = ()
        if layer is not None:
            query += " WHERE layer = ?"
            params = (layer,)
        cursor = self._db.execute(query + " ORDER BY started_at DESC LIMIT ?", (*params, limit))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
