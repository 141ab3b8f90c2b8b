"""One stream of events: written to the structured log and fanned out to
``GET /v1/events`` subscribers and in-process listeners (webhooks), so all
carry the same facts, redacted once here (``core.redact``) before any of them
sees them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from orchestrator.core.redact import redact_fields

SUBSCRIBER_BACKLOG = 1000


class EventBus:
    def __init__(self) -> None:
        self._log = structlog.get_logger("orchestrator")
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        # In-process listeners (webhooks): called synchronously, must not block.
        self.listeners: list[Callable[[str, dict[str, Any], str], None]] = []

    def publish(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        fields = dict(fields)
        redact_fields(fields)
        getattr(self._log, level)(event, **fields)
        for listener in self.listeners:
            listener(event, fields, level)
        # The form the log lines carry (ISO-8601 UTC), so one parser reads both.
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        record = {"event": event, "timestamp": stamp, "level": level, **fields}
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                # A reader that stopped reading loses its stream, not our memory.
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()
