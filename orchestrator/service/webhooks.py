"""Signed webhooks for what operators want to hear about: a failed build, a
published image, an upstream that moved.

Each event a target subscribed to becomes a row in the state database first
(so a restart loses nothing: delivery is at least once), then a JSON POST:

    X-Orchestrator-Event: build_failed
    X-Orchestrator-Delivery: <row id>          (the receiver's de-duplication key)
    X-Orchestrator-Signature: sha256=<hex>     (HMAC-SHA256 of the body, with the secret)

A 2xx is delivered; anything else (or no answer) is tried again with backoff
(5 s doubling to an hour), up to ``MAX_ATTEMPTS``. Delivery runs beside the
builds and never waits on them, nor they on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from orchestrator.build.state import AsyncStateStore
from orchestrator.core.model import NotifyTarget
from orchestrator.engines.runner import log_tail

log = structlog.get_logger("orchestrator.webhooks")
BASE_DELAY_S = 5.0
MAX_DELAY_S = 3600.0
MAX_ATTEMPTS = 30
TIMEOUT_S = 10.0
RETENTION_S = 7 * 86400.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload_for(event: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The webhook event and body for a bus event, or None when it is not one."""
    if event == "build_finished" and fields.get("outcome") in ("failed", "built"):
        kind = "build_failed" if fields["outcome"] == "failed" else "image_published"
        body: dict[str, Any] = {
            "event": kind, "layer": fields.get("layer"), "build_id": fields.get("build_id"),
            "builder": fields.get("builder"), "digest": fields.get("digest"),
            "image": fields.get("image"), "cause": fields.get("trigger"),
            "duration_s": fields.get("duration_s"), "timestamp": time.time(),
        }
        if kind == "build_failed":
            body["error"] = fields.get("error")
            log_path = fields.get("log")
            body["log_tail"] = log_tail(Path(log_path), 40) if log_path else ""
        return kind, body
    if event == "upstream_changed":
        return "upstream_changed", {"event": "upstream_changed",
                                    "upstream": fields.get("upstream"),
                                    "old": fields.get("old"), "new": fields.get("new"),
                                    "timestamp": time.time()}
    return None


class Webhooks:
    def __init__(self, state: AsyncStateStore, targets: Sequence[NotifyTarget]) -> None:
        self.state = state
        self.targets = list(targets)
        self.wakeup = asyncio.Event()
        # Events from the bus, recorded in order by run(); the bus never waits.
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def notice(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        """An event bus listener: never blocks the publisher."""
        if self.targets and payload_for(event, fields) is not None:
            self.inbox.put_nowait((event, dict(fields)))

    async def _record_inbox(self) -> None:
        while True:
            event, fields = await self.inbox.get()
            try:
                await self.record(event, fields)
            except Exception as exc:
                log.error("webhook_record_failed", webhook_event=event, error=repr(exc))

    async def record(self, event: str, fields: dict[str, Any]) -> None:
        """Queue the deliveries an event calls for (durably, before any attempt)."""
        found = payload_for(event, fields)
        if found is None:
            return
        kind, body = found
        text = json.dumps(body, default=str, sort_keys=True)
        for target in self.targets:
            if kind in target.events:
                await self.state.outbox.add(target.url, kind, text)
                self.wakeup.set()

    def _secret_for(self, url: str) -> str | None:
        return next((t.secret for t in self.targets if t.url == url), None)

    async def run(self, stop: asyncio.Event) -> None:
        """Record and deliver until ``stop``: whatever is due, then sleep until the
        next is due or something new is recorded."""
        recorder = asyncio.create_task(self._record_inbox(), name="webhooks-record")
        try:
            await self._deliver_loop(stop)
        finally:
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def _deliver_loop(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
            while not stop.is_set():
                try:
                    await self._deliver_due(http)
                    await self.state.outbox.prune(time.time() - RETENTION_S)
                    upcoming = await self.state.outbox.next_at()
                except Exception as exc:  # a state or network fault: try again later
                    log.warning("webhook_loop_failed", error=repr(exc))
                    upcoming = time.time() + BASE_DELAY_S
                wait = 3600.0 if upcoming is None else max(0.05, upcoming - time.time())
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._either(stop), min(wait, 3600.0))

    async def _either(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wakeup.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _deliver_due(self, http: aiohttp.ClientSession) -> None:
        for row in await self.state.outbox.due(time.time()):
            body = row["body"].encode()
            headers = {"Content-Type": "application/json",
                       "User-Agent": "orchestrator-webhooks",
                       "X-Orchestrator-Event": row["event"],
                       "X-Orchestrator-Delivery": str(row["id"])}
            secret = self._secret_for(row["url"])
            if secret:
                headers["X-Orchestrator-Signature"] = signature(secret, body)
            try:
                async with http.post(row["url"], data=body, headers=headers) as resp:
                    ok, why = 200 <= resp.status < 300, f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                await self.state.outbox.delivered(row["id"])
                log.info("webhook_delivered", delivery=row["id"], webhook_event=row["event"],
                         attempts=row["attempts"] + 1)
                continue
            attempts = row["attempts"] + 1
            if attempts >= MAX_ATTEMPTS:
                # Recorded as given up (delivered_at stays empty, next_at far away).
                await self.state.outbox.failed(row["id"], time.time() + 10 * 365 * 86400,
                                                     f"gave up: {why}")
                log.error("webhook_given_up", delivery=row["id"], error=why)
                continue
            delay = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (attempts - 1))
            await self.state.outbox.failed(row["id"], time.time() + delay, why)
            log.warning("webhook_failed", delivery=row["id"], error=why, retry_in_s=delay)
