"""Signed webhooks for what operators want to hear about: a failed build, a
published image, an upstream that moved.

Each event a target subscribed to becomes a row in the state database first
(so a restart loses nothing: delivery is at least once), then a JSON POST:

    X-Orchestrator-Event: build_failed
    X-Orchestrator-Delivery: <row id>          (the receiver's de-duplication key)
    X-Orchestrator-Signature: sha256=<hex>     (HMAC-SHA256 of the body, with the secret)

Every target has its own sender task: its rows go out oldest first, one at a
time, so order holds and a receiver that hangs delays no other target. Only a
2xx is delivered; anything else (a redirect too: it is never followed) or no
answer within ``timeout_s`` is tried again with backoff (5 s doubling to an
hour), within a number of attempts and an age. A row stores its target's
identity (:attr:`NotifyTarget.identity`: the name, else the URL), never a
secret: a reload that keeps a target keeps its rows, and the rows of a target
that is gone are given up (logged, counted), never sent. What is sent is always
signed. Closing cancels a POST in flight at once (the row stays: the next start
sends it), after the events still in memory are recorded. Delivery runs beside
the builds and never waits on them, nor they on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from orchestrator.build.state import AsyncStateStore
from orchestrator.core.model import NotifyTarget
from orchestrator.core.redact import redact_value
from orchestrator.engines.runner import log_tail
from orchestrator.service.metrics import Metrics

log = structlog.get_logger("orchestrator.webhooks")
# How long close() waits for the events in memory to be written.
RECORD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DeliveryPolicy:
    """The bounds of delivery. Production values by default; tests shrink them."""

    timeout_s: float = 10.0  # one attempt, connect to last byte
    base_delay_s: float = 5.0  # the first retry; doubles with each failure
    max_delay_s: float = 3600.0
    max_attempts: int = 30  # about 20 hours of retries
    max_age_s: float = 3 * 86400.0  # older is given up (downtime of the daemon included)
    max_pending: int = 1000  # per target: beyond it the oldest are dropped
    retention_s: float = 7 * 86400.0  # delivered and given-up rows are kept this long
    sweep_s: float = 600.0  # how often rows of removed targets and old rows are swept
    inbox: int = 10_000  # events waiting to be recorded


def label(identity: str) -> str:
    """How logs, metrics and status name a target: its name, else its URL's
    host and port (a URL's path or query may carry a token)."""
    if "://" not in identity:
        return identity
    parts = urlsplit(identity)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload_for(event: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The webhook event and body for a bus event, or None when it is not one.
    The bus's fields come redacted; the body is redacted again as a whole, since
    the log's tail is read here, from the build's own output."""
    found = _payload(event, fields)
    return (found[0], redact_value(found[1])) if found is not None else None


def _payload(event: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
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
    if event in ("package_fix", "fix_not_applied"):
        # What the fix is, and what it rebuilds (or why the image still lacks it).
        return event, {"event": event, **{k: fields.get(k) for k in (
            "layer", "reason", "fixes", "rebuilds", "indexes", "digest") if k in fields},
            "timestamp": time.time()}
    if event == "upstream_changed":
        return "upstream_changed", {"event": "upstream_changed",
                                    "upstream": fields.get("upstream"),
                                    "old": fields.get("old"), "new": fields.get("new"),
                                    "timestamp": time.time()}
    return None


def _failure(exc: BaseException, url: str, shown: str) -> str:
    """An attempt's error without the target's URL, whose path or query may hold a
    token: aiohttp quotes the whole URL in some errors (an answer it cannot parse)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        text = f"{exc.status}, message={exc.message!r}"
    elif isinstance(exc, aiohttp.InvalidURL):
        text = "invalid URL"
    else:
        text = str(exc)
    text = text.replace(url, shown)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Sender:
    """One target's delivery: its settings, its task and what it did since start."""

    target: NotifyTarget
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    pending: int = 0
    delivered: int = 0
    failed: int = 0  # attempts
    dropped: int = 0
    gave_up: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt_at: float | None = None

    @property
    def label(self) -> str:
        return label(self.target.identity)


class Webhooks:
    def __init__(self, state: AsyncStateStore, targets: Sequence[NotifyTarget],
                 metrics: Metrics | None = None, policy: DeliveryPolicy | None = None) -> None:
        self.state = state
        self.metrics = metrics
        self.policy = policy or DeliveryPolicy()
        self.targets = list(targets)
        # Events from the bus, recorded in order by the recorder; the bus never
        # waits. None tells the recorder to finish.
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]] | None] = \
            asyncio.Queue(self.policy.inbox)
        self._senders: dict[str, _Sender] = {}
        self._recorder: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # cancelled, not yet finished
        self._http: aiohttp.ClientSession | None = None
        self._delivering = False

    # -- lifecycle -------------------------------------------------------------

    def start(self, *, deliver: bool = True) -> None:
        """Record events from now on; with ``deliver``, send them too (a one-shot
        run only records: the next daemon sends)."""
        self._recorder = asyncio.create_task(self._record_inbox(), name="webhooks-record")
        if deliver:
            self._delivering = True
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout_s))
            self._sweeper = asyncio.create_task(self._sweep(), name="webhooks-sweep")
        self._apply(self.targets)

    async def configure(self, targets: Sequence[NotifyTarget]) -> None:
        """A reload. A target whose settings are unchanged goes on undisturbed; a
        changed one restarts with its new URL and secret; the rows of one that is
        gone are given up. Returns at once: a POST in flight to a changed or
        removed target is cancelled, never waited for."""
        self.targets = list(targets)
        self._apply(self.targets)
        if self._delivering:
            try:
                await self._drop_orphans()
            except Exception as exc:  # their sender is gone; the sweep tries again
                log.warning("webhook_sweep_failed", error=repr(exc))

    async def close(self) -> None:
        """Stop sending at once, then record every event still in memory (those of
        builds that finished during the shutdown drain), for the next start."""
        self._delivering = False
        tasks = [s.task for s in self._senders.values() if s.task is not None]
        tasks += [*self._retiring, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._recorder is not None:
            try:
                await asyncio.wait_for(self._finish_recording(self._recorder),
                                       RECORD_TIMEOUT_S)
            except TimeoutError:
                log.error("webhook_events_lost", events=self.inbox.qsize(),
                          error="the state did not record them in time")
            self._recorder = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _finish_recording(self, recorder: asyncio.Task[None]) -> None:
        await self.inbox.put(None)
        await recorder

    def _apply(self, targets: Sequence[NotifyTarget]) -> None:
        wanted = {t.identity: t for t in targets}
        for identity, sender in list(self._senders.items()):
            if identity not in wanted:
                self._retire(sender)
                del self._senders[identity]
                self._gauge_pending(sender.label)
        for identity, target in wanted.items():
            sender = self._senders.setdefault(identity, _Sender(target))
            if sender.target != target:  # same identity, new URL, secret or events
                self._retire(sender)
                sender.target = target
            if self._delivering and sender.task is None:
                sender.task = asyncio.create_task(self._deliver(sender),
                                                  name=f"webhooks-{sender.label}")

    def _retire(self, sender: _Sender) -> None:
        if sender.task is not None:
            sender.task.cancel()  # a POST in flight ends now
            self._retiring.add(sender.task)
            sender.task.add_done_callback(self._retiring.discard)
            sender.task = None

    # -- recording -------------------------------------------------------------

    def notice(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        """An event bus listener: never blocks the publisher."""
        if self.targets and payload_for(event, fields) is not None:
            try:
                self.inbox.put_nowait((event, dict(fields)))
            except asyncio.QueueFull:  # the state has not kept up for a long while
                log.error("webhook_event_lost", webhook_event=event, error="inbox full")

    async def _record_inbox(self) -> None:
        while (item := await self.inbox.get()) is not None:
            event, fields = item
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
        # Read now, written in one call: a reload's sweep that follows sees these rows.
        targets = [t for t in self.targets if kind in t.events]
        if not targets:
            return
        lost = await self.state.outbox.add([(t.identity, t.url) for t in targets],
                                                  kind, text, self.policy.max_pending)
        for target in targets:
            sender = self._senders.get(target.identity)
            if sender is not None:
                sender.wakeup.set()
                sender.dropped += lost.get(target.identity, 0)
            if lost.get(target.identity):
                self._count(label(target.identity), "dropped", lost[target.identity])
                log.warning("webhook_dropped", target=label(target.identity),
                            deliveries=lost[target.identity], reason="queue full")

    # -- sending ---------------------------------------------------------------

    async def _deliver(self, sender: _Sender) -> None:
        """One target's rows, oldest first, until cancelled."""
        while True:
            sender.wakeup.clear()  # before reading: a row recorded after wakes us
            try:
                wait = await self._deliver_next(sender)
            except Exception as exc:  # a state fault: try again later
                log.warning("webhook_loop_failed", target=sender.label, error=repr(exc))
                wait = self.policy.base_delay_s
            if wait is None or wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sender.wakeup.wait(), wait)

    async def _deliver_next(self, sender: _Sender) -> float | None:
        """Try the target's oldest row if it is due. Returns how long to wait
        (None: until something is recorded; 0: go on at once)."""
        row, sender.pending = await self.state.outbox.next(sender.target.identity)
        self._gauge_pending(sender.label)
        sender.next_attempt_at = row["next_at"] if row else None
        if row is None:
            return None
        now = time.time()
        policy = self.policy
        if row["event"] not in sender.target.events:
            await self._end(sender, row, "dropped", f"{row['event']} is no longer subscribed")
        elif now - row["created_at"] > policy.max_age_s:
            await self._end(sender, row, "gave_up", f"older than {policy.max_age_s:.0f} s: "
                            f"{row['last_error'] or 'never tried'}")
        elif row["next_at"] - now > policy.max_delay_s:  # given up before rows said so
            await self._end(sender, row, "gave_up", row["last_error"] or "gave up")
        elif not sender.target.secret:  # what is sent is signed, always
            await self._end(sender, row, "dropped", "no secret to sign it with")
        elif row["next_at"] > now:
            return float(row["next_at"] - now)
        else:
            await self._attempt(sender, row)
        return 0.0

    async def _attempt(self, sender: _Sender, row: dict[str, Any]) -> None:
        assert self._http is not None and sender.target.secret
        body = row["body"].encode()
        headers = {"Content-Type": "application/json",
                   "User-Agent": "orchestrator-webhooks",
                   "X-Orchestrator-Event": row["event"],
                   "X-Orchestrator-Delivery": str(row["id"]),
                   "X-Orchestrator-Signature": signature(sender.target.secret, body)}
        try:
            # A redirect is an answer, not a delivery: following it would turn the
            # POST into a GET (and carry the signature to wherever it points).
            async with self._http.post(sender.target.url, data=body, headers=headers,
                                       allow_redirects=False) as resp:
                ok, why = 200 <= resp.status < 300, f"HTTP {resp.status}"
                if 300 <= resp.status < 400:
                    why += " (redirects are not followed)"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, why = False, _failure(exc, sender.target.url, sender.label)
        attempts = row["attempts"] + 1
        if ok:
            await self.state.outbox.delivered(row["id"])
            sender.delivered += 1
            self._count(sender.label, "delivered")
            log.info("webhook_delivered", delivery=row["id"], webhook_event=row["event"],
                     target=sender.label, attempts=attempts)
            return
        sender.failed += 1
        sender.last_error, sender.last_error_at = why, time.time()
        self._count(sender.label, "failed")
        if attempts >= self.policy.max_attempts:
            await self.state.outbox.failed(row["id"], row["next_at"], why)
            await self._end(sender, {**row, "attempts": attempts}, "gave_up",
                            f"{attempts} attempts: {why}")
            return
        delay = min(self.policy.max_delay_s, self.policy.base_delay_s * 2 ** (attempts - 1))
        await self.state.outbox.failed(row["id"], time.time() + delay, why)
        log.warning("webhook_failed", delivery=row["id"], webhook_event=row["event"],
                    target=sender.label, attempts=attempts, error=why, retry_in_s=delay)

    async def _end(self, sender: _Sender, row: dict[str, Any], result: str, why: str) -> None:
        """A row that will not be sent (again)."""
        await self.state.outbox.given_up(row["id"], why)
        if result == "gave_up":
            sender.gave_up += 1
        else:
            sender.dropped += 1
        self._count(sender.label, result)
        report = log.error if result == "gave_up" else log.warning
        report("webhook_given_up" if result == "gave_up" else "webhook_dropped",
               delivery=row["id"], webhook_event=row["event"], target=sender.label,
               attempts=row["attempts"], reason=why)

    # -- housekeeping ----------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            try:
                await self._drop_orphans()
                await self.state.outbox.prune(time.time() - self.policy.retention_s)
            except Exception as exc:
                log.warning("webhook_sweep_failed", error=repr(exc))
            await asyncio.sleep(self.policy.sweep_s)

    async def _drop_orphans(self) -> None:
        """Rows of targets no longer configured (a reload, or a config edited
        while the daemon was down) are given up: never sent to whoever holds
        that URL now, never sent unsigned."""
        counts = await self.state.outbox.drop([t.identity for t in self.targets],
                                                     "target removed")
        for identity, count in counts.items():
            self._count(label(identity), "dropped", count)
            log.warning("webhook_dropped", target=label(identity), deliveries=count,
                        reason="target removed")

    # -- what it shows ---------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [{"target": s.label, "events": list(s.target.events), "pending": s.pending,
                 "delivered": s.delivered, "failed_attempts": s.failed, "dropped": s.dropped,
                 "gave_up": s.gave_up, "last_error": s.last_error,
                 "last_error_at": s.last_error_at, "next_attempt_at": s.next_attempt_at}
                for s in self._senders.values()]

    def _count(self, target: str, result: str, amount: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.webhooks.labels(target, result).inc(amount)

    def _gauge_pending(self, name: str) -> None:
        """Targets can share a label (two unnamed ones on one host): their sum."""
        if self.metrics is None:
            return
        senders = [s for s in self._senders.values() if s.label == name]
        if senders:
            self.metrics.webhooks_pending.labels(name).set(sum(s.pending for s in senders))
        else:
            with contextlib.suppress(KeyError):
                self.metrics.webhooks_pending.remove(name)
