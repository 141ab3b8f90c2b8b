"""The one SQLite connection of the state, and the one transaction mechanism
every part of it uses.

Each write is one transaction, so a crash or kill -9 leaves either the old or
the new rows, never half of them. One kind of write may wait to be committed:
a *deferred* transaction stays open and the next transaction joins it (a
SAVEPOINT) and commits both, or :meth:`Database.commit_deferred` does. A
finished build uses it: the next build's start must be durable before its
engine starts anyway, so a run of quick builds makes one commit per build, not
two. Deferred writes are kept (as functions that write them again) until a
commit lands, so a transaction SQLite rolled back whole (a full disk) or a
failed COMMIT loses none of them.

A database that cannot be opened is moved aside and replaced: the registry
still holds every image, so a fresh state costs re-planning, not rebuilding.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import grp
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from orchestrator.build.state.schema import MIGRATIONS, SCHEMA

log = logging.getLogger("orchestrator.state")
P = ParamSpec("P")
R = TypeVar("R")

# The longest a deferred write waits for the next transaction to commit it.
COMMIT_DELAY_S = 0.05


class Database:
    """Blocking access, used by one thread at a time (AsyncDatabase runs every
    call on its single worker thread)."""

    def __init__(self, path: Path, group: str | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if _is_resource_error(exc):
                raise  # a full disk is not a corrupt file: never move it aside
            self.moved_aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.rename(self.moved_aside)
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            self._conn = self._open()
        self._deferred = False  # a transaction of ours left open for the next one
        self._in_tx = False
        # Deferred writes since the last commit: (what, write it again).
        self._unsettled: list[tuple[str, Callable[[], None]]] = []
        # Build history and logs are for the socket's users only (same group rule).
        for suffix in ("", "-wal", "-shm"):
            restrict(Path(str(path) + suffix), 0o640 if group is None else 0o660, group)

    def _open(self) -> sqlite3.Connection:
        # Autocommit, with explicit transactions where several statements must
        # land together.
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
    def transaction(self, *, defer: bool = False) -> Iterator[None]:
        """One transaction (the connection is in autocommit mode otherwise).
        ``defer``: leave it open; the next transaction joins it and commits
        both, or :meth:`commit_deferred` does. Unsettled deferred writes are
        written again first. A transaction that fails undoes its own writes
        only; the deferred ones it joined are committed."""
        assert not self._in_tx, "transactions do not nest"
        joined = self._deferred
        self._in_tx = True
        try:
            if not joined:
                self._conn.execute("BEGIN IMMEDIATE")
                if self._unsettled:
                    for _, write in self._unsettled:  # idempotent: the same rows again
                        write()
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

    def keep_until_committed(self, what: str, write: Callable[[], None]) -> None:
        """Register a deferred transaction's writes, to write again if SQLite
        loses them before they are committed."""
        self._unsettled.append((what, write))

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

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection for writes: deferred writes are committed first,
        unless inside a transaction of ours (which has joined them), so what is
        written outside a transaction is durable when its call returns."""
        if (self._deferred or self._unsettled) and not self._in_tx:
            self.commit_deferred()
        return self._conn

    @property
    def read(self) -> sqlite3.Connection:
        """The connection for reads: they commit nothing first. A read sees the
        rows of a deferred transaction still open; and while a full disk refuses
        the commit of deferred writes, reads (status, the queue, the next webhook
        delivery) must still answer."""
        return self._conn

    def commit_deferred(self) -> None:
        """Commit what a deferred transaction left open, or write again and commit
        deferred writes a failure lost. Raises when that fails (they are then
        still kept)."""
        if self._deferred:
            self._deferred = False
            try:
                self._commit()
                return
            except sqlite3.Error:
                pass  # written again below, once
        if self._unsettled:
            with self.transaction():
                pass

    @property
    def unsettled(self) -> list[str]:
        """What deferred writes are not committed yet (layer ids, for builds)."""
        return [what for what, _ in self._unsettled]

    def close(self) -> None:
        try:
            self.commit_deferred()
        finally:
            self._conn.close()


def _is_resource_error(exc: sqlite3.DatabaseError) -> bool:
    """A full disk or an I/O error: the file is fine, the machine is not."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None  # extended codes keep it low
    return primary in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) \
        or "disk is full" in str(exc) or "disk I/O error" in str(exc)


def is_unwritable(exc: BaseException) -> bool:
    """Whether a failed state write is the machine's fault (full disk, I/O error,
    read-only file system): the intent must be kept and the write tried again."""
    if isinstance(exc, sqlite3.DatabaseError):
        return _is_resource_error(exc) or "readonly" in str(exc)
    return isinstance(exc, OSError)


def _commit_logged(db: Database) -> None:
    """The timer's commit: nobody awaits it, so a failure is logged (the build
    then reads as interrupted; the next run finds its image by its key)."""
    try:
        db.commit_deferred()
    except sqlite3.Error as exc:
        log.error("state: a finished build's record could not be committed: %s", exc)


class AsyncDatabase:
    """The database for code on the event loop: every call runs on one worker
    thread (SQLite wants one connection used by one thread at a time, and a slow
    disk must never stall the loop, the API or the systemd watchdog)."""

    def __init__(self, db: Database, *, inline: bool = False) -> None:
        """``inline``: call the database on the event loop itself. For a one-shot
        run nothing else waits on the loop, and a thread hop per call would cost
        more than the call (a 2,000-layer run makes some 14,000 of them)."""
        self.db = db
        self.inline = inline
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state")
        self._commit_timer: asyncio.TimerHandle | None = None

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self.inline:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, functools.partial(fn, *args, **kwargs))

    def commit_soon(self) -> None:
        """Arm the timer that commits a deferred transaction within COMMIT_DELAY_S."""
        loop = asyncio.get_running_loop()
        # (A handle whose time has passed belongs to a loop that is gone.)
        if self._commit_timer is None or self._commit_timer.when() < loop.time():
            self._commit_timer = loop.call_later(COMMIT_DELAY_S, self._on_commit_timer)

    def _on_commit_timer(self) -> None:
        self._commit_timer = None
        if self.inline:
            _commit_logged(self.db)
        else:
            self._worker.submit(_commit_logged, self.db)

    def _cancel_timer(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None

    async def commit_deferred(self) -> sqlite3.Error | None:
        """Commit deferred writes now (a run's end: what it built is durable
        before it reports). Returns the error when they could not be; they are
        then still kept (:attr:`Database.unsettled`) for the next write."""
        self._cancel_timer()
        try:
            await self.call(self.db.commit_deferred)
        except sqlite3.Error as exc:
            return exc
        return None

    async def close(self) -> None:
        self._cancel_timer()
        try:
            await self.call(self.db.close)  # commits deferred writes first
        except sqlite3.Error as exc:  # the connection is closed all the same
            log.error("state: finished builds could not be recorded at close: %s", exc)
        finally:
            self._worker.shutdown(wait=True)


def restrict(path: Path, mode: int, group: str | None) -> None:
    """chmod (and chgrp to ``group``) a file or folder the daemon owns, if it exists."""
    with contextlib.suppress(FileNotFoundError):
        if group is not None:
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)


class _Twin(Protocol):
    part: Any
    adb: AsyncDatabase


T = TypeVar("T")


def off_loop(method: Callable[Concatenate[T, P], R]
             ) -> Callable[Concatenate[_Twin, P], Coroutine[Any, Any, R]]:
    """The async twin of a part's method, run on the database's worker thread."""
    async def twin(self: _Twin, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.adb.inline:  # one frame less: a 2,000-layer run makes some 8,000 calls
            return method(self.part, *args, **kwargs)
        return await self.adb.call(method, self.part, *args, **kwargs)

    twin.__doc__ = method.__doc__
    return twin
