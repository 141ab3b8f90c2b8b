"""Durable state in SQLite (WAL): what each layer was last built from, and every build.

Each write is one transaction, so a crash or kill -9 leaves either the old or
the new row, never half of one. One kind waits to be committed: a finished
build's (``finish_built``) joins the next build's start, which must be durable
before its engine starts anyway, or a timer commits it within COMMIT_DELAY_S;
a crash in between loses nothing the next run cannot find in the registry.
A database that cannot be opened is moved
aside and replaced, because the registry still holds every image: a fresh
state costs re-planning, not rebuilding.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import grp
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

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
CREATE INDEX IF NOT EXISTS builds_running ON builds (outcome) WHERE outcome = 'running';
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
-- Every trigger (POST /v1/builds, a file change, an upstream change) is a request
-- that stays answerable until it is done and after: what it asked, what happened.
CREATE TABLE IF NOT EXISTS requests (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    cause       TEXT NOT NULL,
    force       INTEGER NOT NULL,
    layers      TEXT NOT NULL,               -- JSON list of layer ids
    state       TEXT NOT NULL,               -- queued | running | done
    results     TEXT NOT NULL DEFAULT '{}',  -- JSON {layer: outcome}
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS requests_by_time ON requests (created_at);
-- Webhook deliveries, kept until delivered: at least once, across restarts.
CREATE TABLE IF NOT EXISTS notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    url          TEXT NOT NULL,
    event        TEXT NOT NULL,
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    created_at   REAL NOT NULL,
    delivered_at REAL,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (delivered_at, next_at);
-- When each build key was first built: its images carry that time, so a
-- rebuild of the same inputs can give the same bytes (and digest).
CREATE TABLE IF NOT EXISTS keys (
    build_key   TEXT PRIMARY KEY,
    layer       TEXT NOT NULL,
    first_built REAL NOT NULL
);
"""
# Columns added after the first release: (table, column, declaration).
MIGRATIONS = [
    ("builds", "cause", "TEXT"),
    ("builds", "request_id", "TEXT"),
    ("builds", "builder", "TEXT"),
    ("builds", "base_ref", "TEXT"),  # what the builder stood on: cleanup after a crash
    ("builds", "platform", "TEXT"),
    ("queue", "requests", "TEXT NOT NULL DEFAULT '[]'"),  # every request merged into it
    ("layers", "platform_digests", "TEXT NOT NULL DEFAULT '{}'"),  # platform -> manifest
    ("builds", "platform_digests", "TEXT"),
]


@dataclass(frozen=True)
class LayerRecord:
    layer: str
    build_key: str
    digest: str
    ref: str
    inputs: Inputs
    built_at: float  # last time an image was actually built (for rebuild.every)
    # A multi-platform layer's image is an index: each platform's manifest digest,
    # which that platform's children are built FROM.
    platform_digests: Mapping[str, str] = field(default_factory=dict)


# Made once: json.dumps with any option builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_SORTED = json.JSONEncoder(sort_keys=True)


def inputs_to_json(inputs: Inputs) -> str:
    return _COMPACT.encode({
        "dockerfile": inputs.dockerfile,
        "files": [[e.path, e.mode, e.digest] for e in inputs.files],
        "args": [list(a) for a in inputs.args],
        "parent_digest": inputs.parent_digest,
        "bases": [list(b) for b in inputs.bases],
        "platforms": list(inputs.platforms),
        "secrets": list(inputs.secrets),
        "packages": [list(p) for p in inputs.packages],
    })


def inputs_from_json(text: str) -> Inputs:
    data: dict[str, Any] = json.loads(text)
    return Inputs(
        dockerfile=data["dockerfile"],
        files=tuple(FileEntry(p, m, d) for p, m, d in data["files"]),
        args=tuple((k, v) for k, v in data["args"]),
        parent_digest=data["parent_digest"],
        bases=tuple((r, d) for r, d in data.get("bases", [])),
        platforms=tuple(data.get("platforms", [])),
        secrets=tuple(data.get("secrets", [])),
        packages=tuple((n, v) for n, v in data.get("packages", [])),
    )


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _queue_row(row: dict[str, Any]) -> dict[str, Any]:
    row["requests"] = json.loads(row.get("requests") or "[]") or [row["request_id"]]
    return row


class StateStore:
    """Blocking access to the database. The daemon and the pipeline use it
    through :class:`AsyncStateStore`, which keeps every call off the event loop."""

    def __init__(self, path: Path, group: str | None = None) -> None:
        self.path = path
        self.group = group
        path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError:
            self.moved_aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.rename(self.moved_aside)
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            self._conn = self._open()
        # A write transaction left open for the next one to commit with its own
        # (finish_built with defer=True), and whether one of ours is running.
        self._deferred = False
        self._in_tx = False
        # Deferred finishes since the last commit, to write again if SQLite
        # rolled their transaction back (disk full, I/O error).
        self._unsettled: list[tuple[str, LayerRecord]] = []
        # Build history and logs are for the socket's users only (same group rule).
        for suffix in ("", "-wal", "-shm"):
            restrict(Path(str(path) + suffix), 0o640 if group is None else 0o660, group)

    def _open(self) -> sqlite3.Connection:
        # Autocommit, with explicit `with self._tx():` transactions where several
        # statements must land together. One connection, used by one thread at a
        # time (AsyncStateStore runs every call on its single worker thread).
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
    def _tx(self, *, defer: bool = False) -> Iterator[None]:
        """One transaction (the connection is in autocommit mode otherwise).
        ``defer``: leave it open; the next transaction joins it and commits both,
        or :meth:`commit_deferred` does. Deferred finishes not yet committed are
        kept until they are (a transaction SQLite rolled back whole, a failed
        COMMIT): the next transaction writes them again first. A transaction that
        fails undoes its own writes only; the deferred ones are committed."""
        assert not self._in_tx, "transactions do not nest"
        joined = self._deferred
        self._in_tx = True
        try:
            if not joined:
                self._conn.execute("BEGIN IMMEDIATE")
                if self._unsettled:
                    self._write_unsettled()
                    joined = True
            if joined:
                self._conn.execute("SAVEPOINT joined")
        except BaseException:
            self._in_tx = False
            self._deferred = False
            self._rollback()
            raise
        try:
            yield
        except BaseException:
            self._in_tx = False
            self._deferred = False
            if joined and self._conn.in_transaction:
                # Never lets a second error hide the first: the deferred
                # writes stay unsettled and are written by the next transaction.
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK TO joined")
                    self._conn.execute("RELEASE joined")
                    self._commit()
            self._rollback()
            raise
        self._in_tx = False
        if joined:
            self._conn.execute("RELEASE joined")
        if defer:
            self._deferred = True
        else:
            self._deferred = False
            self._commit()

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()  # a failed COMMIT may leave the transaction open
            raise
        self._unsettled.clear()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _write_unsettled(self) -> None:
        for build_id, record in self._unsettled:  # idempotent: the same rows again
            self._write_finish(build_id, record)

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection for statements: deferred finishes are committed first,
        unless inside one of ours (which has joined them), so what is written
        outside a transaction is durable when its call returns."""
        if (self._deferred or self._unsettled) and not self._in_tx:
            self.commit_deferred()
        return self._conn

    def commit_deferred(self) -> None:
        """Commit what ``finish_built(defer=True)`` left open, or write again and
        commit deferred finishes a failure lost. Raises when that fails (they are
        then still kept)."""
        if self._deferred:
            self._deferred = False
            try:
                self._commit()
                return
            except sqlite3.Error:
                pass  # written again below, once
        if self._unsettled:
            with self._tx():
                pass

    @property
    def unsettled(self) -> list[str]:
        """Layers whose finished build is not committed yet."""
        return [record.layer for _, record in self._unsettled]

    def close(self) -> None:
        try:
            self.commit_deferred()
        finally:
            self._conn.close()

    # -- layers -----------------------------------------------------------------

    _LAYER_COLUMNS = "layer, build_key, digest, ref, inputs, built_at, platform_digests"

    @staticmethod
    def _record(row: tuple[Any, ...]) -> LayerRecord:
        return LayerRecord(row[0], row[1], row[2], row[3], inputs_from_json(row[4]), row[5],
                           json.loads(row[6] or "{}"))

    def layer(self, layer: str) -> LayerRecord | None:
        row = self._db.execute(f"SELECT {self._LAYER_COLUMNS} FROM layers WHERE layer = ?",
                               (layer,)).fetchone()
        return None if row is None else self._record(row)

    def layers(self, only: Collection[str] | None = None) -> dict[str, LayerRecord]:
        """Every layer's record, or those of ``only``: one query (a run reads its
        layers' records up front, not one statement per layer)."""
        rows = self._db.execute(f"SELECT {self._LAYER_COLUMNS} FROM layers").fetchall()
        return {r[0]: self._record(r) for r in rows if only is None or r[0] in only}

    def save_layer(self, record: LayerRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO layers (layer, build_key, digest, ref, inputs, built_at, "
            "updated_at, platform_digests) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.layer, record.build_key, record.digest, record.ref,
             inputs_to_json(record.inputs), record.built_at, time.time(),
             _SORTED.encode(dict(record.platform_digests)) if record.platform_digests
             else "{}"),
        )

    def key_first_built(self, key: str, layer: str, now: float) -> float:
        """When ``key`` was first built (recording ``now`` if it never was)."""
        with self._tx():
            return self._first_built(key, layer, now)

    def _first_built(self, key: str, layer: str, now: float) -> float:
        # Not an upsert with RETURNING: that needs SQLite 3.35 (RHEL 9 has 3.34).
        row = self._db.execute("SELECT first_built FROM keys WHERE build_key = ?",
                               (key,)).fetchone()
        if row is not None:
            return float(row[0])
        self._db.execute("INSERT INTO keys VALUES (?, ?, ?)", (key, layer, now))
        return now

    def keys(self) -> dict[str, tuple[str, float]]:
        """Every build key this state knows: key -> (layer, first built)."""
        return {row[0]: (row[1], float(row[2])) for row in
                self._db.execute("SELECT build_key, layer, first_built FROM keys")}

    # -- builds -----------------------------------------------------------------

    def start_build(self, build_id: str, layer: str, key: str | None, reason: str,
                    log_path: str | None, *, cause: str | None = None,
                    request_id: str | None = None, builder: str | None = None,
                    base_ref: str | None = None, platform: str | None = None) -> None:
        """Record a build as running."""
        self._db.execute(
            "INSERT INTO builds (id, layer, build_key, reason, outcome, started_at, log_path, "
            "cause, request_id, builder, base_ref, platform) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
            (build_id, layer, key, reason, time.time(), log_path, cause, request_id, builder,
             base_ref, platform),
        )

    def start_keyed_build(self, build_id: str, layer: str, key: str, reason: str,
                          log_path: str | None, now: float, *, cause: str | None = None,
                          request_id: str | None = None, builder: str | None = None,
                          base_ref: str | None = None) -> float:
        """start_build and key_first_built in one transaction: returns when the key
        was first built (``now`` if never)."""
        with self._tx():
            self.start_build(build_id, layer, key, reason, log_path, cause=cause,
                             request_id=request_id, builder=builder, base_ref=base_ref)
            return self._first_built(key, layer, now)

    def finish_build(self, build_id: str, outcome: str, digest: str | None = None,
                     error: str | None = None,
                     platform_digests: Mapping[str, str] | None = None) -> None:
        self._db.execute(
            "UPDATE builds SET outcome = ?, digest = ?, error = ?, finished_at = ?, "
            "platform_digests = ? WHERE id = ?",
            (outcome, digest, error, time.time(),
             _SORTED.encode(dict(platform_digests)) if platform_digests else None,
             build_id),
        )

    def finish_built(self, build_id: str, record: LayerRecord, *, defer: bool = False) -> None:
        """A build that made its image: done, and the layer's record, together (a
        crash between two transactions would leave a built build the layer's
        record does not know). ``defer``: committed by the next transaction or
        :meth:`commit_deferred`. A crash before that loses nothing that matters:
        the build reads as interrupted, and the next run finds its image under
        its key in the registry and records the layer then."""
        with self._tx(defer=defer):
            self._write_finish(build_id, record)
        if defer:
            self._unsettled.append((build_id, record))

    def _write_finish(self, build_id: str, record: LayerRecord) -> None:
        self.finish_build(build_id, "built", record.digest,
                          platform_digests=record.platform_digests)
        self.save_layer(record)

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
        return _rows(self._db.execute(query + " ORDER BY started_at DESC LIMIT ?",
                                      (*params, limit)))

    def build(self, build_id: str) -> dict[str, Any] | None:
        rows = _rows(self._db.execute("SELECT * FROM builds WHERE id = ?", (build_id,)))
        return rows[0] if rows else None

    def last_build(self, layer: str) -> dict[str, Any] | None:
        """The newest build of exactly this layer id (uses the (layer, started_at) index)."""
        rows = _rows(self._db.execute("SELECT * FROM builds WHERE layer = ? "
                                      "ORDER BY started_at DESC LIMIT 1", (layer,)))
        return rows[0] if rows else None

    def last_builds(self, layers: list[str]) -> dict[str, dict[str, Any]]:
        return {lid: row for lid in layers if (row := self.last_build(lid)) is not None}

    def mark_interrupted(self) -> list[dict[str, Any]]:
        """Builds left 'running' by a crash: recorded as interrupted, never as built."""
        # Read first: nearly always there are none, and a write transaction
        # would cost every one-shot run a sync of the database.
        if self._db.execute("SELECT 1 FROM builds WHERE outcome = 'running' LIMIT 1") \
                .fetchone() is None:
            return []
        with self._tx():
            rows = _rows(self._db.execute("SELECT * FROM builds WHERE outcome = 'running'"))
            self._db.execute("UPDATE builds SET outcome = 'interrupted', finished_at = ? "
                             "WHERE outcome = 'running'", (time.time(),))
        return rows

    # -- the queue: what the daemon still has to do, surviving restarts ---------

    def enqueue(self, layer: str, *, force: bool, cause: str, request_id: str,
                requests: list[str] | None = None) -> str:
        """Queue a layer; returns the request id of the entry that will serve it. A
        layer already waiting absorbs the trigger (forced if either was, every
        request id kept); one being built gets exactly one follow-up entry."""
        merged = list(dict.fromkeys(requests or [request_id]))
        with self._tx():
            row = self._db.execute("SELECT id, request_id, requests FROM queue WHERE layer = ? "
                                   "AND taken = 0", (layer,)).fetchone()
            if row is not None:
                known = json.loads(row[2] or "[]") or [row[1]]
                union = list(dict.fromkeys([*known, *merged]))
                self._db.execute("UPDATE queue SET force = max(force, ?), requests = ? "
                                 "WHERE id = ?", (int(force), json.dumps(union), row[0]))
                return str(row[1])
            self._db.execute("INSERT INTO queue (layer, force, cause, request_id, enqueued_at, "
                             "requests) VALUES (?, ?, ?, ?, ?, ?)",
                             (layer, int(force), cause, merged[0], time.time(),
                              json.dumps(merged)))
            return merged[0]

    def queued(self, taken: bool | None = None) -> list[dict[str, Any]]:
        if taken is None:
            cursor = self._db.execute("SELECT * FROM queue ORDER BY id")
        else:
            cursor = self._db.execute("SELECT * FROM queue WHERE taken = ? ORDER BY id",
                                      (int(taken),))
        return [_queue_row(row) for row in _rows(cursor)]

    def take_queue(self) -> list[dict[str, Any]]:
        """Everything waiting, now marked as served by the run about to start."""
        with self._tx():
            rows = self.queued(taken=False)
            self._db.execute("UPDATE queue SET taken = 1 WHERE taken = 0")
            for request in {r for row in rows for r in row["requests"]}:
                self._db.execute("UPDATE requests SET state = 'running' WHERE id = ? AND "
                                 "state = 'queued'", (request,))
        return rows

    def finish_queue(self, ids: list[int]) -> None:
        with self._tx():
            self._db.executemany("DELETE FROM queue WHERE id = ?", [(i,) for i in ids])

    def requeue_taken(self, ids: list[int] | None = None) -> int:
        """Taken entries wait again (after a crash, or a run that was refused),
        merged with any newer entry for the same layer: force and request ids kept."""
        with self._tx():
            rows = self.queued(taken=True)
            if ids is not None:
                rows = [row for row in rows if row["id"] in ids]
            for row in rows:
                waiting = self._db.execute("SELECT id, requests, request_id FROM queue WHERE "
                                           "layer = ? AND taken = 0", (row["layer"],)).fetchone()
                if waiting is None:
                    self._db.execute("UPDATE queue SET taken = 0 WHERE id = ?", (row["id"],))
                    continue
                known = json.loads(waiting[1] or "[]") or [waiting[2]]
                union = list(dict.fromkeys([*row["requests"], *known]))
                self._db.execute("UPDATE queue SET force = max(force, ?), requests = ? "
                                 "WHERE id = ?", (row["force"], json.dumps(union), waiting[0]))
                self._db.execute("DELETE FROM queue WHERE id = ?", (row["id"],))
            for request in {r for row in rows for r in row["requests"]}:
                self._db.execute("UPDATE requests SET state = 'queued' WHERE id = ? AND "
                                 "state = 'running'", (request,))
        return len(rows)

    # -- requests ----------------------------------------------------------------

    def add_request(self, request_id: str, layers: list[str], *, force: bool,
                    cause: str) -> None:
        self._db.execute("INSERT INTO requests (id, created_at, cause, force, layers, state) "
                         "VALUES (?, ?, ?, ?, ?, 'queued')",
                         (request_id, time.time(), cause, int(force), json.dumps(layers)))

    def record_results(self, results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
        """Add layer outcomes to requests: {request id: {layer: {"outcome": …,
        "build_id": …}}}. A request no queue entry serves any more is done.
        Returns the ids now done."""
        done = []
        with self._tx():
            for request_id, outcomes in results.items():
                row = self._db.execute("SELECT results FROM requests WHERE id = ?",
                                       (request_id,)).fetchone()
                if row is None:
                    continue
                merged = {**json.loads(row[0] or "{}"), **outcomes}
                self._db.execute("UPDATE requests SET results = ? WHERE id = ?",
                                 (json.dumps(merged), request_id))
            for request_id in results:
                if self._request_pending(request_id):
                    continue
                changed = self._db.execute(
                    "UPDATE requests SET state = 'done', finished_at = ? WHERE id = ? AND "
                    "state != 'done'", (time.time(), request_id)).rowcount
                if changed:
                    done.append(request_id)
        return done

    def _request_pending(self, request_id: str) -> bool:
        # Request ids are letters, digits and "-": no LIKE wildcard can occur.
        return self._db.execute("SELECT 1 FROM queue WHERE requests LIKE ? LIMIT 1",
                                (f'%"{request_id}"%',)).fetchone() is not None

    def request(self, request_id: str) -> dict[str, Any] | None:
        rows = _rows(self._db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)))
        if not rows:
            return None
        row = rows[0]
        row["layers"] = json.loads(row["layers"])
        row["results"] = json.loads(row["results"] or "{}")
        row["force"] = bool(row["force"])
        return row

    def prune_requests(self, cutoff: float) -> int:
        return self._db.execute("DELETE FROM requests WHERE state = 'done' AND "
                                "finished_at < ?", (cutoff,)).rowcount

    # -- webhook deliveries -------------------------------------------------------

    def add_notification(self, url: str, event: str, body: str) -> int:
        now = time.time()
        cursor = self._db.execute("INSERT INTO notifications (url, event, body, next_at, "
                                  "created_at) VALUES (?, ?, ?, ?, ?)",
                                  (url, event, body, now, now))
        return int(cursor.lastrowid or 0)

    def due_notifications(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        return _rows(self._db.execute(
            "SELECT * FROM notifications WHERE delivered_at IS NULL AND next_at <= ? "
            "ORDER BY id LIMIT ?", (now, limit)))

    def next_notification_at(self) -> float | None:
        row = self._db.execute("SELECT min(next_at) FROM notifications WHERE delivered_at "
                               "IS NULL").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def notification_done(self, ident: int) -> None:
        self._db.execute("UPDATE notifications SET delivered_at = ?, attempts = attempts + 1 "
                         "WHERE id = ?", (time.time(), ident))

    def notification_failed(self, ident: int, next_at: float, error: str) -> None:
        self._db.execute("UPDATE notifications SET attempts = attempts + 1, next_at = ?, "
                         "last_error = ? WHERE id = ?", (next_at, error[:500], ident))

    def prune_notifications(self, cutoff: float) -> int:
        return self._db.execute("DELETE FROM notifications WHERE delivered_at < ?",
                                (cutoff,)).rowcount

    # -- upstream values last seen -------------------------------------------

    def upstream(self, name: str) -> dict[str, Any] | None:
        rows = _rows(self._db.execute("SELECT * FROM upstreams WHERE name = ?", (name,)))
        return rows[0] if rows else None

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


# The longest a finished build's record waits for the next build's transaction
# to commit it with its own.
COMMIT_DELAY_S = 0.05
log = logging.getLogger("orchestrator.state")


def _commit_logged(store: StateStore) -> None:
    """The timer's commit: nobody awaits it, so a failure is logged (the build
    then reads as interrupted; the next run finds its image by its key)."""
    try:
        store.commit_deferred()
    except sqlite3.Error as exc:
        log.error("state: a finished build's record could not be committed: %s", exc)


P = ParamSpec("P")
R = TypeVar("R")


def _off_loop(method: Callable[Concatenate[StateStore, P], R]
              ) -> Callable[Concatenate[AsyncStateStore, P], Awaitable[R]]:
    """The async twin of a StateStore method, run on the store's worker thread."""
    async def twin(self: AsyncStateStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.inline:  # one frame less: a 2,000-layer run makes some 8,000 calls
            return method(self.store, *args, **kwargs)
        return await self.call(method, self.store, *args, **kwargs)

    twin.__doc__ = method.__doc__
    return twin


class AsyncStateStore:
    """The state store for code on the event loop: every call runs on one worker
    thread (SQLite wants one connection used by one thread at a time, and a slow
    disk must never stall the loop, the API or the systemd watchdog)."""

    def __init__(self, store: StateStore, *, inline: bool = False) -> None:
        """``inline``: call the store on the event loop itself. For a one-shot run
        nothing else waits on the loop, and a thread hop per call would cost more
        than the call (a 2,000-layer run makes some 14,000 of them)."""
        self.store = store
        self.inline = inline
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state")
        self._commit_timer: asyncio.TimerHandle | None = None

    @property
    def moved_aside(self) -> Path | None:
        return self.store.moved_aside

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self.inline:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        try:
            await self.call(self.store.close)  # commits deferred finishes first
        except sqlite3.Error as exc:  # the connection is closed all the same
            log.error("state: finished builds could not be recorded at close: %s", exc)
        finally:
            self._worker.shutdown(wait=True)

    async def finish_built(self, build_id: str, record: LayerRecord) -> None:
        """StateStore.finish_built, committed with the next build's start when that
        comes within COMMIT_DELAY_S (a run of quick builds makes one commit per
        build, not two), else by a timer then."""
        try:
            await self.call(self.store.finish_built, build_id, record, defer=True)
        finally:  # armed even if this task is cancelled while the write runs
            loop = asyncio.get_running_loop()
            # (A handle whose time has passed belongs to a loop that is gone.)
            if self._commit_timer is None or self._commit_timer.when() < loop.time():
                self._commit_timer = loop.call_later(COMMIT_DELAY_S, self._on_commit_timer)

    async def commit_deferred(self) -> sqlite3.Error | None:
        """Commit deferred finishes now (a run's end: what it built is durable
        before it reports). Returns the error when they could not be; they are
        then still kept (:attr:`unsettled`) for the next write."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        try:
            await self.call(self.store.commit_deferred)
        except sqlite3.Error as exc:
            return exc
        return None

    @property
    def unsettled(self) -> list[str]:
        return self.store.unsettled

    def _on_commit_timer(self) -> None:
        self._commit_timer = None
        if self.inline:
            _commit_logged(self.store)
        else:
            self._worker.submit(_commit_logged, self.store)

    layer = _off_loop(StateStore.layer)
    save_layer = _off_loop(StateStore.save_layer)
    key_first_built = _off_loop(StateStore.key_first_built)
    keys = _off_loop(StateStore.keys)
    layers = _off_loop(StateStore.layers)
    start_build = _off_loop(StateStore.start_build)
    start_keyed_build = _off_loop(StateStore.start_keyed_build)
    finish_build = _off_loop(StateStore.finish_build)
    builds = _off_loop(StateStore.builds)
    build = _off_loop(StateStore.build)
    last_builds = _off_loop(StateStore.last_builds)
    mark_interrupted = _off_loop(StateStore.mark_interrupted)
    enqueue = _off_loop(StateStore.enqueue)
    queued = _off_loop(StateStore.queued)
    take_queue = _off_loop(StateStore.take_queue)
    finish_queue = _off_loop(StateStore.finish_queue)
    requeue_taken = _off_loop(StateStore.requeue_taken)
    add_request = _off_loop(StateStore.add_request)
    record_results = _off_loop(StateStore.record_results)
    request = _off_loop(StateStore.request)
    prune_requests = _off_loop(StateStore.prune_requests)
    add_notification = _off_loop(StateStore.add_notification)
    due_notifications = _off_loop(StateStore.due_notifications)
    next_notification_at = _off_loop(StateStore.next_notification_at)
    notification_done = _off_loop(StateStore.notification_done)
    notification_failed = _off_loop(StateStore.notification_failed)
    prune_notifications = _off_loop(StateStore.prune_notifications)
    upstream = _off_loop(StateStore.upstream)
    save_upstream = _off_loop(StateStore.save_upstream)


def restrict(path: Path, mode: int, group: str | None) -> None:
    """chmod (and chgrp to ``group``) a file or folder the daemon owns, if it exists."""
    with contextlib.suppress(FileNotFoundError):
        if group is not None:
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)


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
