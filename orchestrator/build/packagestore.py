"""Package records and package index states, in their own SQLite file in the state dir.

Why a file of its own (``packages.db``) rather than tables in ``state.db``:
everything here is a cache of facts the registry and the package mirrors can
give again. A record is keyed by an image digest and never changes; losing the
file costs one full read of each image's layers, never a rebuild. Kept apart,
it never joins the build state's transactions (a finished build's commit rides
on the next build's; a 100 KB record should not), a damaged file is simply
replaced, and the build state stays small. The lead can still move these two
tables into state.db: the class needs only a path.

Blocking; async callers use ``asyncio.to_thread``. Each call opens its own
connection, so any thread may call (a call costs well under a millisecond next
to the registry reads it saves).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path

from orchestrator.build.state import restrict
from orchestrator.core.packages import PackageRecord, record_from_json, record_to_json

PACKAGES_DB = "packages.db"
log = logging.getLogger("orchestrator.packages")

SCHEMA = """
CREATE TABLE IF NOT EXISTS package_records (
    digest      TEXT PRIMARY KEY,   -- the image's manifest digest
    owner       TEXT NOT NULL,      -- layer id or upstream:NAME
    record      BLOB NOT NULL,      -- zlib of core.packages.record_to_json
    saved_at    REAL NOT NULL,
    used_at     REAL NOT NULL       -- last read: what pruning goes by
);
CREATE TABLE IF NOT EXISTS fix_windows (
    layer       TEXT PRIMARY KEY,   -- a layer with package fixes pending
    opened_at   REAL NOT NULL       -- when its first pending fix was seen
);
CREATE TABLE IF NOT EXISTS package_indexes (
    source      TEXT PRIMARY KEY,   -- an index source's id: "apt URI SUITE", "apk URL"
    state       TEXT NOT NULL,      -- registry.indexwatch.IndexState as JSON
    saved_at    REAL NOT NULL
);
"""


class PackageStore:
    def __init__(self, path: Path, group: str | None = None) -> None:
        self.path = path
        self.group = group
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._db():
                pass
        except sqlite3.DatabaseError as exc:
            # A cache: set the damaged file aside and start again.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("packages: %s cannot be read (%s); moved to %s", path, exc, aside)
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            with self._db():
                pass
        for suffix in ("", "-wal", "-shm"):
            restrict(Path(str(path) + suffix), 0o640 if group is None else 0o660, group)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            yield db
        finally:
            db.close()

    # -- records ----------------------------------------------------------------

    def record(self, digest: str) -> PackageRecord | None:
        """The record of an image, or None (none kept, or one this version cannot read)."""
        with self._db() as db:
            row = db.execute("SELECT record FROM package_records WHERE digest = ?",
                             (digest,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE package_records SET used_at = ? WHERE digest = ?",
                       (time.time(), digest))
        try:
            return record_from_json(zlib.decompress(row[0]))
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            log.warning("packages: the record of %s cannot be read (%s); reading the image "
                        "again", digest, exc)
            return None

    def save(self, records: Iterable[PackageRecord]) -> None:
        now = time.time()
        rows = [(r.digest, r.owner, zlib.compress(record_to_json(r).encode(), 6), now, now)
                for r in records]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO package_records "
                           "(digest, owner, record, saved_at, used_at) VALUES (?, ?, ?, ?, ?)",
                           rows)
            db.execute("COMMIT")

    def forget(self, digests: Collection[str]) -> None:
        with self._db() as db:
            db.executemany("DELETE FROM package_records WHERE digest = ?",
                           [(d,) for d in digests])

    def prune(self, cutoff: float, keep: Collection[str] = ()) -> int:
        """Forget records last used before ``cutoff``, except those of ``keep`` (the
        digests layers stand on now)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TEMP TABLE keep (digest TEXT PRIMARY KEY)")
            db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", [(d,) for d in keep])
            removed = db.execute("DELETE FROM package_records WHERE used_at < ? AND digest "
                                 "NOT IN (SELECT digest FROM keep)", (cutoff,)).rowcount
            db.execute("COMMIT")
        return removed

    # -- index states -----------------------------------------------------------

    def index_state(self, source: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT state FROM package_indexes WHERE source = ?",
                             (source,)).fetchone()
        return row[0] if row else None

    def save_index_state(self, source: str, state: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO package_indexes (source, state, saved_at) "
                       "VALUES (?, ?, ?)", (source, state, time.time()))

    def index_states(self) -> dict[str, str]:
        """Every index state kept, by source id."""
        with self._db() as db:
            return dict(db.execute("SELECT source, state FROM package_indexes").fetchall())

    def forget_index_states(self, keep: Collection[str]) -> None:
        """Drop the states of sources no image names any more."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            for (source,) in db.execute("SELECT source FROM package_indexes").fetchall():
                if source not in keep:
                    db.execute("DELETE FROM package_indexes WHERE source = ?", (source,))
            db.execute("COMMIT")

    # -- fix windows ------------------------------------------------------------

    def windows(self) -> dict[str, float]:
        """Layer -> when its oldest pending fix was first seen (a restart keeps it)."""
        with self._db() as db:
            return dict(db.execute("SELECT layer, opened_at FROM fix_windows").fetchall())

    def save_windows(self, windows: Mapping[str, float]) -> None:
        """Replace the windows kept with ``windows``."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM fix_windows")
            db.executemany("INSERT INTO fix_windows (layer, opened_at) VALUES (?, ?)",
                           sorted(windows.items()))
            db.execute("COMMIT")
