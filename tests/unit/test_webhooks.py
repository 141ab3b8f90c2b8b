"""Webhook delivery against real HTTP receivers on 127.0.0.1 and a real state
database: each target on its own, in order, signed, bounded, never followed
through a redirect, and stopped at once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.state import AsyncStateStore, StateStore
from orchestrator.catalog.config import load_config
from orchestrator.cli.client import render_full_status
from orchestrator.core.errors import InputError
from orchestrator.core.model import NotifyTarget
from orchestrator.service.metrics import Metrics
from orchestrator.service.webhooks import DeliveryPolicy, Webhooks
from tests.webhook_receiver import HookReceiver

SECRET = "s3cret-one"
FAST = DeliveryPolicy(base_delay_s=0.1, max_delay_s=0.4, sweep_s=3600.0)
PUBLISHED = {"outcome": "built", "layer": "base", "image": "reg/base@sha256:ab",
             "digest": "sha256:ab"}


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    with HookReceiver() as server:
        yield server


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[AsyncStateStore]:
    store = AsyncStateStore(StateStore(tmp_path / "state.db"))
    yield store
    await store.close()


@pytest.fixture
async def hooks_factory(state: AsyncStateStore) -> AsyncIterator[Callable[..., Webhooks]]:
    made: list[Webhooks] = []

    def make(*targets: NotifyTarget, policy: DeliveryPolicy = FAST,
             start: bool = True) -> Webhooks:
        hooks = Webhooks(state, targets, Metrics(), policy)
        if start:
            hooks.start()
        made.append(hooks)
        return hooks

    yield make
    for hooks in made:
        await hooks.close()


def target(receiver: HookReceiver, path: str, secret: str = SECRET,
           name: str | None = None) -> NotifyTarget:
    return NotifyTarget(receiver.url(path), ("build_failed", "image_published"), secret, name)


def published(n: int) -> dict[str, Any]:
    return {**PUBLISHED, "build_id": f"b-{n}"}


def rows(tmp_path: Path) -> list[dict[str, Any]]:
    """The outbox as a second connection sees it (what a restart would find)."""
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM notifications ORDER BY id")]
    finally:
        db.close()


def metric(hooks: Webhooks, name: str, **labels: str) -> float:
    assert hooks.metrics is not None
    return hooks.metrics.registry.get_sample_value(name, labels) or 0.0


async def eventually(check: Callable[[], Any], within: float = 15.0, what: str = "it") -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def test_a_hanging_receiver_delays_no_other_target_and_a_stop_cancels_it_at_once(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    # Production timeout (10 s): a hanging receiver holds its own POST that long.
    hang, ok = target(receiver, "/hang"), target(receiver, "/ok")
    hooks = hooks_factory(hang, ok, policy=DeliveryPolicy())
    await hooks.record("build_finished", published(1))
    await eventually(lambda: receiver.posts("/hang"), what="the POST that hangs")
    await eventually(lambda: receiver.posts("/ok"), 1.0, "the healthy target's delivery")
    assert receiver.posts("/ok")[0].at - receiver.posts("/hang")[0].at < 1.0

    started = time.monotonic()
    await hooks.configure([hang, ok])  # a reload that keeps both: nothing restarts
    assert time.monotonic() - started < 0.5
    await asyncio.sleep(0.2)
    assert len(receiver.posts("/hang")) == 1, "the unchanged target was not restarted"

    started = time.monotonic()
    await hooks.close()
    assert time.monotonic() - started < 1.0, "the POST in flight was cancelled at once"
    hung = [r for r in rows(tmp_path) if r["target"] == hang.identity]
    assert hung[0]["delivered_at"] is None and hung[0]["given_up_at"] is None, \
        "cut short, it is still owed (at least once)"


async def test_a_redirect_is_neither_followed_nor_counted_as_delivered(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    moved = target(receiver, "/redirect")
    hooks = hooks_factory(moved, policy=DeliveryPolicy(base_delay_s=30.0))
    await hooks.record("build_finished", published(1))
    await eventually(lambda: hooks.status()[0]["last_error"] and rows(tmp_path)[0]["attempts"],
                     what="the attempt's result")
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/redirect")]
    assert not receiver.to("/elsewhere")
    [row] = rows(tmp_path)
    assert row["delivered_at"] is None and row["attempts"] == 1
    assert row["last_error"] == "HTTP 302 (redirects are not followed)"
    label = f"127.0.0.1:{receiver.port}"
    assert metric(hooks, "orchestrator_webhook_deliveries_total", target=label,
                  result="failed") == 1
    assert metric(hooks, "orchestrator_webhook_deliveries_total", target=label,
                  result="delivered") == 0
    assert metric(hooks, "orchestrator_webhook_pending", target=label) == 1


async def test_a_failed_attempt_is_retried_as_the_same_signed_delivery(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    receiver.fail["/flaky"] = 1
    hooks = hooks_factory(target(receiver, "/flaky", name="flaky"))
    await hooks.record("build_finished", published(1))
    await eventually(lambda: hooks.status()[0]["delivered"], what="the retried delivery")
    first, second = receiver.posts("/flaky")
    assert first.delivery == second.delivery and first.body == second.body
    assert first.signed_with(SECRET) and second.signed_with(SECRET)
    assert second.at - first.at >= 0.09  # after the backoff
    assert rows(tmp_path)[0]["attempts"] == 2
    assert metric(hooks, "orchestrator_webhook_deliveries_total", target="flaky",
                  result="failed") == 1
    assert metric(hooks, "orchestrator_webhook_deliveries_total", target="flaky",
                  result="delivered") == 1
    [shown] = hooks.status()
    assert shown["delivered"] == 1 and shown["failed_attempts"] == 1
    assert shown["last_error"] == "HTTP 500" and shown["pending"] == 0


async def test_a_target_keeps_its_order_behind_a_failing_delivery(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    receiver.fail["/ordered"] = 2
    hooks = hooks_factory(target(receiver, "/ordered"))
    for n in range(1, 4):
        await hooks.record("build_finished", published(n))
    await eventually(lambda: all(r["delivered_at"] for r in rows(tmp_path)), what="all three")
    sent = [json.loads(r.body)["build_id"] for r in receiver.posts("/ordered")]
    assert sent == ["b-1", "b-1", "b-1", "b-2", "b-3"]


async def test_the_rows_of_a_removed_or_renamed_target_are_dropped_never_sent(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    receiver.fail.update({"/gone": 1000, "/old-url": 1000})
    gone, moved = target(receiver, "/gone", name="gone"), target(receiver, "/old-url")
    hooks = hooks_factory(gone, moved)
    await hooks.record("build_finished", published(1))
    await eventually(lambda: receiver.posts("/gone") and receiver.posts("/old-url"),
                     what="a failed attempt to each")
    # A reload: "gone" is removed, the unnamed target's URL changed (a new target).
    renamed = target(receiver, "/new-url")
    started = time.monotonic()
    await hooks.configure([renamed])
    assert time.monotonic() - started < 0.5
    sent = len(receiver.requests)
    await asyncio.sleep(1.0)  # many backoffs (0.1 s to 0.4 s)
    assert len(receiver.requests) == sent, "nothing more was sent, to either URL"
    assert not receiver.to("/new-url"), "rows do not follow a URL to a new target"
    ended = {r["target"]: r for r in rows(tmp_path)}
    for identity in (gone.identity, moved.identity):
        assert ended[identity]["given_up_at"] is not None
        assert ended[identity]["last_error"] == "target removed"
    assert metric(hooks, "orchestrator_webhook_deliveries_total", target="gone",
                  result="dropped") == 1
    assert metric(hooks, "orchestrator_webhook_deliveries_total",
                  target=f"127.0.0.1:{receiver.port}", result="dropped") == 1
    assert [s["target"] for s in hooks.status()] == [f"127.0.0.1:{receiver.port}"]


async def test_a_target_changed_in_place_keeps_its_rows_and_signs_with_its_new_secret(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    receiver.fail["/before"] = 1000
    hooks = hooks_factory(target(receiver, "/before", name="ops"),
                          policy=DeliveryPolicy(base_delay_s=0.3, max_delay_s=0.3))
    await hooks.record("build_finished", published(1))
    await eventually(lambda: receiver.posts("/before"), what="a failed attempt")
    await hooks.configure([target(receiver, "/after", secret="rotated", name="ops")])
    [delivered] = await eventually(lambda: receiver.posts("/after"), what="the moved delivery")
    assert delivered.signed_with("rotated") and not delivered.signed_with(SECRET)
    assert delivered.delivery == receiver.posts("/before")[0].delivery


async def test_two_targets_on_one_url_are_each_signed_with_their_own_secret(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(target(receiver, "/shared", "secret-a", name="team-a"),
                          target(receiver, "/shared", "secret-b", name="team-b"))
    await hooks.record("build_finished", published(1))
    posts = await eventually(lambda: len(receiver.posts("/shared")) == 2
                             and receiver.posts("/shared"), what="both deliveries")
    signed_a = [p for p in posts if p.signed_with("secret-a")]
    signed_b = [p for p in posts if p.signed_with("secret-b")]
    assert len(signed_a) == len(signed_b) == 1
    assert signed_a[0].delivery != signed_b[0].delivery


async def test_rows_of_targets_gone_while_stopped_are_dropped_at_start(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks],
        state: AsyncStateStore, tmp_path: Path) -> None:
    old = target(receiver, "/removed-while-down")
    await state.outbox.add([(old.identity, old.url)], "image_published", "{}", 10)
    hooks = hooks_factory(target(receiver, "/still-here"))
    await eventually(lambda: metric(hooks, "orchestrator_webhook_deliveries_total",
                                    target=f"127.0.0.1:{receiver.port}", result="dropped"),
                     what="the orphan given up")
    await asyncio.sleep(0.3)
    assert not receiver.requests
    assert rows(tmp_path)[0]["last_error"] == "target removed"
    assert metric(hooks, "orchestrator_webhook_deliveries_total",
                  target=f"127.0.0.1:{receiver.port}", result="dropped") == 1


async def test_rows_from_before_targets_had_an_identity_go_to_the_target_with_their_url(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks],
        state: AsyncStateStore, tmp_path: Path) -> None:
    hook = target(receiver, "/legacy")
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    now = time.time()
    # As an older version left them: no target; one it gave up (next try in 10 years).
    db.executemany("INSERT INTO notifications (url, event, body, next_at, created_at, "
                   "attempts, last_error) VALUES (?, 'image_published', ?, ?, ?, ?, ?)",
                   [(hook.url, '{"n": 1}', now + 10 * 365 * 86400, now, 30, "gave up: HTTP 500"),
                    (hook.url, '{"n": 2}', now, now, 0, None)])
    db.close()
    hooks_factory(hook)
    [delivered] = await eventually(lambda: receiver.posts("/legacy"), what="the old row")
    assert json.loads(delivered.body) == {"n": 2} and delivered.signed_with(SECRET)
    first, second = rows(tmp_path)
    assert first["given_up_at"] is not None and second["delivered_at"] is not None


async def test_a_target_queue_keeps_its_newest_rows(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    hooks = hooks_factory(target(receiver, "/full", name="full"),
                          policy=DeliveryPolicy(max_pending=2), start=False)
    for n in range(1, 5):
        await hooks.record("build_finished", published(n))
    kept = [json.loads(r["body"])["build_id"] for r in rows(tmp_path) if not r["given_up_at"]]
    assert kept == ["b-3", "b-4"]
    assert {r["last_error"] for r in rows(tmp_path) if r["given_up_at"]} == {"queue full"}
    assert metric(hooks, "orchestrator_webhook_deliveries_total", target="full",
                  result="dropped") == 2


async def test_attempts_and_age_are_bounded(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks],
        state: AsyncStateStore, tmp_path: Path) -> None:
    receiver.fail["/down"] = 1000
    hooks = hooks_factory(target(receiver, "/down", name="down"),
                          policy=DeliveryPolicy(base_delay_s=0.05, max_attempts=3))
    await hooks.record("build_finished", published(1))
    await eventually(lambda: hooks.status()[0]["gave_up"], what="giving up")
    assert len(receiver.posts("/down")) == 3
    assert rows(tmp_path)[0]["last_error"] == "3 attempts: HTTP 500"
    assert metric(hooks, "orchestrator_webhook_deliveries_total", target="down",
                  result="gave_up") == 1

    # Four days old (the daemon was down): given up without an attempt.
    await hooks.close()
    receiver.fail.clear()
    old = target(receiver, "/late", name="late")
    await state.outbox.add([(old.identity, old.url)], "image_published", "{}", 10)
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    db.execute("UPDATE notifications SET created_at = ? WHERE target = 'late'",
               (time.time() - 4 * 86400,))
    db.close()
    hooks_factory(old)
    await eventually(lambda: rows(tmp_path)[-1]["given_up_at"], what="the old row given up")
    assert not receiver.posts("/late")
    assert rows(tmp_path)[-1]["last_error"].startswith("older than 259200 s")


async def test_events_still_in_memory_at_close_are_recorded(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    hooks = hooks_factory(target(receiver, "/late-event", name="late"))
    hooks.notice("build_finished", published(7))  # as the bus does, during the drain
    await hooks.close()
    [row] = rows(tmp_path)
    assert json.loads(row["body"])["build_id"] == "b-7" and row["target"] == "late"


async def test_a_target_without_a_secret_is_sent_nothing(
        receiver: HookReceiver, hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    unsigned = NotifyTarget(receiver.url("/unsigned"), ("image_published",), None)
    hooks = hooks_factory(unsigned)
    await hooks.record("build_finished", published(1))
    await eventually(lambda: rows(tmp_path)[0]["given_up_at"], what="the row given up")
    assert not receiver.requests
    assert rows(tmp_path)[0]["last_error"] == "no secret to sign it with"


def notify_config(tmp_path: Path, tables: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[state]\ndir = "state"\n{tables}')
    return path


def test_notify_targets_are_signed_and_told_apart(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hook = '[[notify]]\nurl = "https://hooks.example/x"\n'
    with pytest.raises(InputError, match=r"notify\[0\]\.secret.*every delivery is signed"):
        load_config(notify_config(tmp_path, hook))
    with pytest.raises(InputError, match="every delivery is signed"):
        load_config(notify_config(tmp_path, hook + 'secret = ""\n'))
    with pytest.raises(InputError, match=r"notify\[1\]\.url.*also notify\[0\]'s.*name"):
        load_config(notify_config(tmp_path, (hook + 'secret = "a"\n') * 2))
    twice = hook + 'secret = "a"\nname = "ops"\n'
    with pytest.raises(InputError, match=r"notify\[1\]\.name.*'ops' is also notify\[0\]'s"):
        load_config(notify_config(tmp_path, twice * 2))
    with pytest.raises(InputError, match=r"notify\[0\]\.name"):
        load_config(notify_config(tmp_path, hook + 'secret = "a"\nname = "a b"\n'))
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    config = load_config(notify_config(
        tmp_path, hook + 'secret = "a"\nname = "team-a"\n'
        + hook + 'secret_env = "HOOK_SECRET"\nname = "team-b"\n'))
    assert [(t.identity, t.secret) for t in config.notify] == [("team-a", "a"),
                                                               ("team-b", "from-env")]


def test_status_names_a_target_that_owes_deliveries() -> None:
    shown = {"target": "ops", "pending": 3, "delivered": 5, "last_error": "HTTP 302 "
             "(redirects are not followed)", "last_error_at": time.time() - 4}
    quiet = {**shown, "target": "quiet", "pending": 0, "last_error": None}
    status = {"phase": "ready", "pid": 1, "uptime_s": 9.0, "backend": {"name": "b", "error": None},
              "webhooks": [shown, quiet]}
    text = render_full_status(status, [])
    assert "ops              3 pending, 5 delivered; last error 4s ago: HTTP 302 (redirects " \
           "are not followed)" in text
    assert "quiet" not in text


async def test_a_garbled_answer_is_reported_without_the_urls_path(
        hooks_factory: Callable[..., Webhooks], tmp_path: Path) -> None:
    """A URL's path may hold a token (that is why targets are labelled by host and
    port); aiohttp quotes the whole URL in the error of an answer it cannot parse,
    which went into status, the outbox row and the log."""
    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"http://127.0.0.1:{port}/services/T0KEN-in-the-path?sig=q"
        hooks = hooks_factory(NotifyTarget(url, ("image_published",), SECRET),
                              policy=DeliveryPolicy(base_delay_s=30.0))
        await hooks.record("build_finished", published(1))
        await eventually(lambda: rows(tmp_path)[0]["attempts"], what="the attempt")
        error = hooks.status()[0]["last_error"]
        assert error and error.startswith("ClientResponseError: 400") and "T0KEN" not in error
        assert "T0KEN" not in (rows(tmp_path)[0]["last_error"] or "")
    finally:
        server.close()
        await server.wait_closed()
