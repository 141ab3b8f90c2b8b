"""Webhooks: a signed JSON POST per event, retried with backoff while the receiver
fails, delivered at least once across a daemon kill -9 and a SIGTERM drain, never
blocking builds, reloads or other targets."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, api, daemon_config, wait_until
from tests.webhook_receiver import HookReceiver

pytestmark = pytest.mark.integration
SECRET = "hook-secret"


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fail_next = 0
        self.attempts = 0
        self.received: list[dict[str, Any]] = []


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.attempts += 1
        if self.server.fail_next > 0:
            self.server.fail_next -= 1
            self.send_response(500)
            self.end_headers()
            return
        self.server.received.append({"headers": dict(self.headers), "body": body})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def events(receiver: Receiver) -> list[str]:
    return [r["headers"]["X-Orchestrator-Event"] for r in receiver.received]


def test_webhooks_are_signed_retried_and_survive_a_crash(project: Project, testbed: Testbed,
                                                         receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                  testbed.seed_tag,
                  extra=f'[[notify]]\nurl = "{url}"\nsecret = "{SECRET}"\n'
                        'events = ["build_failed", "image_published"]\n')
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("broken", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo tests failed; exit 3\n")
    receiver.fail_next = 2  # the first two attempts fail: retried with backoff
    daemon = DaemonProcess(project).ready()
    try:
        daemon.idle()
        wait_until(lambda: {"build_failed", "image_published"} <= set(events(receiver)), 60,
                   0.2, "both webhooks delivered")
        assert receiver.attempts >= 4
        for record in receiver.received:
            body, headers = record["body"], record["headers"]
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Orchestrator-Signature"] == expected
        failed = json.loads(next(r["body"] for r in receiver.received
                                 if r["headers"]["X-Orchestrator-Event"] == "build_failed"))
        assert failed["layer"] == "broken" and "tests failed" in failed["log_tail"]
        published = json.loads(next(r["body"] for r in receiver.received
                                    if r["headers"]["X-Orchestrator-Event"]
                                    == "image_published"))
        assert published["layer"] == "base" and published["image"].endswith(
            published["digest"])

        # The receiver goes away; a new failure is recorded, the daemon dies hard.
        receiver.fail_next = 10_000
        before = len(receiver.received)
        (project.layers / "broken" / "Dockerfile").write_text(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo still failing; exit 4\n")
        wait_until(lambda: receiver.attempts > 4 + 1, 60, 0.2, "a failing attempt")
    finally:
        daemon.kill()
    receiver.fail_next = 0
    again = DaemonProcess(project).ready()
    try:
        wait_until(lambda: len(receiver.received) > before, 60, 0.2,
                   "delivery after the restart")
        assert "still failing" in json.loads(receiver.received[-1]["body"])["log_tail"]
    finally:
        again.kill()



def notify(url: str, name: str, secret: str = SECRET) -> str:
    return (f'[[notify]]\nname = "{name}"\nurl = "{url}"\nsecret = "{secret}"\n'
            'events = ["build_failed", "image_published"]\n')


def webhook_status(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {h["target"]: h for h in api(daemon.socket, "GET", "/v1/status")[1]["webhooks"]}


def test_a_hanging_receiver_delays_neither_a_reload_nor_another_target(
        project: Project, testbed: Testbed) -> None:
    with HookReceiver() as receiver:
        daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                      testbed.seed_tag, extra=notify(receiver.url("/hang"), "hang")
                      + notify(receiver.url("/ok"), "ok"))
        project.layer("base", 'from = "upstream:seed"\n')
        daemon = DaemonProcess(project).ready()
        try:
            wait_until(lambda: receiver.posts("/hang"), 120, 0.05, "the POST that hangs")
            started = time.monotonic()
            code, _ = api(daemon.socket, "POST", "/v1/reload")
            reload_s = time.monotonic() - started
            assert code == 200 and reload_s < 1.0, f"the reload took {reload_s:.2f} s"
            [ok] = wait_until(lambda: receiver.posts("/ok"), 5, 0.05, "the healthy delivery")
            assert ok.at - receiver.posts("/hang")[0].at < 1.0 and ok.signed_with(SECRET)
            shown = wait_until(lambda: (s := webhook_status(daemon))["ok"]["delivered"] and s,
                               5, 0.1, "the delivery in status")
            assert shown["hang"]["pending"] == 1 and shown["hang"]["delivered"] == 0
            started = time.monotonic()
            assert daemon.stop() == 0
            assert time.monotonic() - started < 5.0, "the stop cancelled the hanging POST"
            assert len(receiver.posts("/hang")) == 1, "the reload kept the unchanged target"
        finally:
            daemon.kill()


def test_the_rows_of_a_target_removed_by_reload_are_dropped_never_sent(
        project: Project, testbed: Testbed) -> None:
    with HookReceiver() as receiver:
        receiver.fail["/gone"] = 1_000_000
        namespace = unique_namespace()
        kept = notify(receiver.url("/kept"), "kept")
        daemon_config(project, testbed.registry, namespace, testbed.seed_image,
                      testbed.seed_tag, extra=notify(receiver.url("/gone"), "gone") + kept)
        project.layer("base", 'from = "upstream:seed"\n')
        daemon = DaemonProcess(project).ready()
        try:
            wait_until(lambda: receiver.posts("/gone") and receiver.posts("/kept"), 120, 0.1,
                       "a failed attempt to one, a delivery to the other")
            daemon_config(project, testbed.registry, namespace, testbed.seed_image,
                          testbed.seed_tag, extra=kept)
            assert api(daemon.socket, "POST", "/v1/reload")[0] == 200
            sent = len(receiver.posts("/gone"))
            time.sleep(8)  # past the 5 s retry the row had
            assert len(receiver.posts("/gone")) == sent == 1
            dropped = [e for e in daemon.events() if e["event"] == "webhook_dropped"]
            assert [(e["target"], e["deliveries"], e["reason"]) for e in dropped] == \
                [("gone", 1, "target removed")]
            assert list(webhook_status(daemon)) == ["kept"]
            metrics = api(daemon.socket, "GET", "/metrics")[1]
            assert 'orchestrator_webhook_deliveries_total{result="dropped",target="gone"} 1.0' \
                in metrics
            assert 'orchestrator_webhook_deliveries_total{result="failed",target="gone"} 1.0' \
                in metrics
        finally:
            daemon.kill()


def test_a_build_finishing_during_the_shutdown_drain_is_notified_after_the_next_start(
        project: Project, testbed: Testbed) -> None:
    with HookReceiver() as receiver:
        receiver.fail["/hook"] = 1_000_000  # nothing gets through before the restart
        daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                      testbed.seed_tag, extra=notify(receiver.url("/hook"), "ops"))
        # Long enough that the SIGTERM lands mid-build on a loaded machine too.
        project.layer("slow", 'from = "upstream:seed"\n',
                      "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN sleep 6\nUSER 1000\n")
        daemon = DaemonProcess(project).ready()
        try:
            wait_until(lambda: api(daemon.socket, "GET", "/v1/status")[1]["running"], 60, 0.1,
                       "the build running")
            assert daemon.stop(signal.SIGTERM) == 0
        finally:
            daemon.kill()
        names = [e["event"] for e in daemon.events()]
        [built] = [e for e in daemon.events() if e["event"] == "build_finished"]
        assert built["outcome"] == "built"
        assert names.index("daemon_stopping") < names.index("build_finished"), \
            "the build finished during the drain"
        receiver.fail.clear()
        # The sender may have tried (and been refused) during the drain: only
        # what reaches the receiver after the restart counts.
        refused = len(receiver.posts("/hook"))
        again = DaemonProcess(project).ready()
        try:
            [hook] = wait_until(lambda: receiver.posts("/hook")[refused:], 30, 0.1,
                                "the drained event")
            body = json.loads(hook.body)
            assert (body["event"], body["build_id"]) == ("image_published", built["build_id"])
            assert hook.signed_with(SECRET)
        finally:
            again.kill()
