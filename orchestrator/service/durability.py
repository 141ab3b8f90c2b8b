"""Whether the state database takes writes, and what waits until it does.

On a full disk (or an I/O error, a file system remounted read-only) SQLite
refuses writes. The daemon stays up: each intent it could not write (a
trigger, a file change, an upstream's new value, the end of a run) is held in
memory, in order, and written again by itself, with backoff, once a probe
write succeeds. Until then no run starts (a build that cannot be recorded as
running must not start), status and the ``orchestrator_state_writable``
metric say why, and one error line is logged when it starts, every
REPEAT_LOG_S while it lasts, and one line when it ends: never a flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.build.state import AsyncStateStore, is_unwritable

RETRY_S = (2.0, 5.0, 10.0, 30.0, 60.0)
REPEAT_LOG_S = 600.0

Publish = Callable[[str, dict[str, Any], str], None]


class StateHealth:
    def __init__(self, state: AsyncStateStore, publish: Publish,
                 on_change: Callable[[bool], None] = lambda writable: None) -> None:
        self.state = state
        self.publish = publish
        self.on_change = on_change  # a metric, the systemd status line
        self.error: str | None = None
        self.since: float | None = None
        self._logged = 0.0
        self.held: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self.recovered = asyncio.Event()
        self.recovered.set()
        self._trouble = asyncio.Event()  # set while writes are refused: run() retries
        self._attempts = 0

    @property
    def writable(self) -> bool:
        return self.error is None

    def failed(self, what: str, exc: BaseException) -> None:
        """A write was refused. Callers hold what they could not write first."""
        now = time.time()
        if self.error is None:
            self.since = now
            self._attempts = 0
            self.recovered.clear()
            self._trouble.set()
            self.on_change(False)
        self.error = f"{what}: {exc}"
        if now - self._logged >= REPEAT_LOG_S:
            self._logged = now
            self.publish("state_unwritable", {"error": self.error, "since": self.since,
                                              "held": len(self.held)}, "error")

    async def write(self, what: str, write: Callable[[], Awaitable[None]]) -> bool:
        """Run ``write``; when the state refuses it, hold it (and everything after
        it, to keep the order) and return False. Other errors propagate."""
        if not self.writable:
            self.held.append((what, write))
            return False
        try:
            await write()
        except Exception as exc:
            if not is_unwritable(exc):
                raise
            self.held.append((what, write))
            self.failed(what, exc)
            return False
        return True

    async def try_again(self) -> bool:
        """Write what is held, in order; then a probe. True when all went through."""
        while self.held:
            what, write = self.held[0]
            try:
                await write()
            except Exception as exc:
                if not is_unwritable(exc):
                    # Not a disk problem: it will never go through. Drop it, loudly.
                    self.held.pop(0)
                    self.publish("state_write_dropped", {"what": what, "error": repr(exc)},
                                 "error")
                    continue
                self.failed(what, exc)
                return False
            self.held.pop(0)
        try:
            await self.state.probe()
        except Exception as exc:
            if not is_unwritable(exc):
                raise
            self.failed("probe", exc)
            return False
        if self.error is not None:
            lasted = round(time.time() - (self.since or time.time()), 1)
            self.error, self.since, self._logged = None, None, 0.0
            self.publish("state_writable", {"unwritable_s": lasted}, "info")
            self.on_change(True)
        self.recovered.set()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Try again with backoff while the state refuses writes."""
        while not stop.is_set():
            await first_of(stop, self._trouble)
            if stop.is_set():
                return
            delay = RETRY_S[min(self._attempts, len(RETRY_S) - 1)]
            self._attempts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if not stop.is_set() and await self.try_again():
                self._trouble.clear()

    def status(self) -> dict[str, Any]:
        return {"writable": self.writable, "error": self.error, "since": self.since,
                "held": [what for what, _ in self.held]}


async def first_of(*events: asyncio.Event) -> None:
    """Until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
