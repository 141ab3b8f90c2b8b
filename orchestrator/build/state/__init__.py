"""Durable state in SQLite (WAL), split by what it stores.

- :mod:`.db`: the connection, and the one transaction and deferred-commit
  mechanism every part uses;
- :mod:`.records`: each layer's record (what it was last built from) and when
  each build key was first built;
- :mod:`.history`: every build;
- :mod:`.work`: the daemon's queue and the requests it serves;
- :mod:`.upstreams`: the upstream values last seen;
- :mod:`.outbox`: webhook deliveries.

:class:`StateStore` holds the parts over one database and carries the two
writes that span parts (a build's start with its key's first-built time; a
build's finish with the layer's record), each one transaction.
:class:`AsyncStateStore` is the same for code on the event loop.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from orchestrator.build.state.db import AsyncDatabase, Database, is_unwritable, restrict
from orchestrator.build.state.history import AsyncBuildHistory, BuildHistory
from orchestrator.build.state.outbox import AsyncOutbox, Outbox
from orchestrator.build.state.records import (
    AsyncLayerRecords,
    LayerRecord,
    LayerRecords,
    inputs_from_json,
    inputs_to_json,
)
from orchestrator.build.state.upstreams import AsyncUpstreamValues, UpstreamValues
from orchestrator.build.state.work import AsyncWorkStore, WorkStore

__all__ = ["AsyncStateStore", "LayerRecord", "StateStore", "inputs_from_json",
           "inputs_to_json", "is_unwritable", "restrict"]


class StateStore:
    """Blocking access to every part of the state."""

    def __init__(self, path: Path, group: str | None = None) -> None:
        self.db = Database(path, group)
        self.records = LayerRecords(self.db)
        self.history = BuildHistory(self.db)
        self.work = WorkStore(self.db)
        self.upstreams = UpstreamValues(self.db)
        self.outbox = Outbox(self.db)

    @property
    def moved_aside(self) -> Path | None:
        return self.db.moved_aside

    @property
    def unsettled(self) -> list[str]:
        """Layers whose finished build is not committed yet (and ``build <id>``
        for builds whose end is not)."""
        return self.db.unsettled

    def start_keyed_build(self, build_id: str, layer: str, key: str, reason: str,
                          log_path: str | None, now: float, *, cause: str | None = None,
                          request_id: str | None = None, builder: str | None = None,
                          base_ref: str | None = None) -> float:
        """A build recorded as running and its key's first-built time, in one
        transaction: returns when the key was first built (``now`` if never)."""
        with self.db.transaction():
            self.history.start(build_id, layer, key, reason, log_path, cause=cause,
                               request_id=request_id, builder=builder, base_ref=base_ref)
            return self.records.first_built(key, layer, now)

    def finish_built(self, build_id: str, record: LayerRecord, *, defer: bool = False,
                     steps: dict[str, float] | None = None) -> None:
        """A build that made its image: done, and the layer's record, together (a
        crash between two transactions would leave a built build the layer's
        record does not know). ``defer``: committed by the next transaction or
        by ``commit_deferred``. A crash before that loses nothing that matters:
        the build reads as interrupted, and the next run finds its image under
        its key in the registry and records the layer then."""
        def write() -> None:
            self.history.finish(build_id, "built", record.digest,
                                platform_digests=record.platform_digests, steps=steps)
            self.records.save(record)

        with self.db.transaction(defer=defer):
            write()
        if defer:
            self.db.keep_until_committed(record.layer, write)

    def end_build(self, build_id: str, outcome: str, *, error: str | None = None,
                  steps: dict[str, float] | None = None) -> None:
        """A build that made no image (failed, cancelled) ends. When the machine
        refuses the write (a full disk), it is kept and written by the next
        transaction that succeeds: a build that ended never stays 'running', and
        its end still reaches the events, metrics and webhooks now."""
        def write() -> None:
            self.history.finish(build_id, outcome, error=error, steps=steps)

        try:
            with self.db.transaction():
                write()
        except sqlite3.DatabaseError as exc:
            if not is_unwritable(exc):
                raise
            self.db.keep_until_committed(f"build {build_id}", write)

    def commit_deferred(self) -> None:
        self.db.commit_deferred()

    def probe(self) -> None:
        """One small durable write: does the database take writes again? (Deferred
        writes are committed first.)"""
        self.db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)",
                             (str(time.time()),))

    def close(self) -> None:
        self.db.close()


class AsyncStateStore:
    """The state for code on the event loop: every call runs on one worker thread
    (see :class:`~orchestrator.build.state.db.AsyncDatabase`)."""

    def __init__(self, store: StateStore, *, inline: bool = False) -> None:
        self.store = store
        self.adb = AsyncDatabase(store.db, inline=inline)
        self.records = AsyncLayerRecords(store.records, self.adb)
        self.history = AsyncBuildHistory(store.history, self.adb)
        self.work = AsyncWorkStore(store.work, self.adb)
        self.upstreams = AsyncUpstreamValues(store.upstreams, self.adb)
        self.outbox = AsyncOutbox(store.outbox, self.adb)

    @property
    def inline(self) -> bool:
        return self.adb.inline

    @property
    def moved_aside(self) -> Path | None:
        return self.store.moved_aside

    @property
    def unsettled(self) -> list[str]:
        return self.store.unsettled

    async def start_keyed_build(self, build_id: str, layer: str, key: str, reason: str,
                                log_path: str | None, now: float, *, cause: str | None = None,
                                request_id: str | None = None, builder: str | None = None,
                                base_ref: str | None = None) -> float:
        return await self.adb.call(self.store.start_keyed_build, build_id, layer, key, reason,
                                   log_path, now, cause=cause, request_id=request_id,
                                   builder=builder, base_ref=base_ref)

    async def finish_built(self, build_id: str, record: LayerRecord,
                           steps: dict[str, float] | None = None) -> None:
        """StateStore.finish_built, committed with the next build's start when that
        comes within COMMIT_DELAY_S, else by a timer then."""
        try:
            await self.adb.call(self.store.finish_built, build_id, record, defer=True,
                                steps=steps)
        finally:  # armed even if this task is cancelled while the write runs
            self.adb.commit_soon()

    async def end_build(self, build_id: str, outcome: str, *, error: str | None = None,
                        steps: dict[str, float] | None = None) -> None:
        await self.adb.call(self.store.end_build, build_id, outcome, error=error, steps=steps)

    async def commit_deferred(self) -> sqlite3.Error | None:
        return await self.adb.commit_deferred()

    async def probe(self) -> None:
        await self.adb.call(self.store.probe)

    async def close(self) -> None:
        await self.adb.close()
