"""Webhooks: a signed JSON POST per event, retried with backoff while the receiver
fails, delivered at least once across a daemon kill -9, never blocking builds."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, daemon_config, wait_until

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
