"""Acceptance: the control socket of the real daemon, sd_notify and socket activation."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.daemon_helpers import (
    DaemonProcess,
    UnixHTTPConnection,
    api,
    daemon_config,
    wait_until,
)

pytestmark = pytest.mark.integration


def small_catalog(project: Project, testbed: Testbed, **kwargs: str) -> None:
    daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                  testbed.seed_tag, **kwargs)
    project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n')
    project.layer("child", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo line-one; sleep 2; "
                  "echo line-two\n")


@pytest.fixture
def daemon(project: Project, testbed: Testbed) -> Iterator[DaemonProcess]:
    small_catalog(project, testbed)
    proc = DaemonProcess(project).ready()
    proc.idle()
    yield proc
    proc.kill()


def test_every_endpoint(daemon: DaemonProcess) -> None:
    sock = daemon.socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    assert api(sock, "GET", "/v1/_ping") == (200, "OK")

    status, body = api(sock, "GET", "/v1/status")
    assert status == 200 and body["phase"] == "ready" and body["backend"]["name"] == "buildah"
    assert body["upstreams"]["seed"]["digest"].startswith("sha256:")

    status, body = api(sock, "GET", "/v1/layers")
    assert status == 200
    layers = {entry["layer"]: entry for entry in body["layers"]}
    assert set(layers) == {"base", "child"}
    assert layers["child"]["stale"] is False and layers["child"]["last_outcome"] == "built"
    assert layers["child"]["digest"].startswith("sha256:")

    # A forced build of child: 202, an id, a build that can be looked up.
    status, body = api(sock, "POST", "/v1/builds", {"layers": ["child"], "force": True})
    assert status == 202 and body["layers"] == ["child"]
    request_id = body["id"]
    build = wait_until(lambda: next((b for b in daemon.builds("child")
                                     if b["request_id"] == request_id), None), what="build")
    # The log streams while the build runs: the first line arrives before the end.
    conn = UnixHTTPConnection(sock)
    conn.request("GET", f"/v1/builds/{build['id']}/log?follow=1")
    resp = conn.getresponse()
    first_lines = b""
    while b"line-one" not in first_lines:
        first_lines += resp.read1(4096)
    assert api(sock, "GET", f"/v1/builds/{build['id']}")[1]["outcome"] == "running"
    rest = resp.read()
    assert b"line-two" in rest
    conn.close()

    status, body = api(sock, "GET", f"/v1/builds/{build['id']}")
    assert status == 200 and body["outcome"] == "built" and body["cause"].startswith(
        "manual trigger by uid")
    # The request closes when its run does (after the build's row is final).
    def request_done() -> dict[str, Any] | None:
        request = api(sock, "GET", f"/v1/builds/{request_id}")[1]
        return request if request["state"] == "done" else None
    body = wait_until(request_done, what="request done")
    assert len(body["builds"]) == 1
    status, body = api(sock, "GET", "/v1/builds?layer=child")
    assert status == 200 and body["builds"][0]["id"] == build["id"]
    status, body = api(sock, "GET", f"/v1/builds/{build['id']}/log")
    assert status == 200 and "line-two" in body

    # Cancel: a finished build is a conflict; a running one stops.
    assert api(sock, "POST", f"/v1/builds/{build['id']}/cancel")[0] == 409
    api(sock, "POST", "/v1/builds", {"layers": ["child"], "force": True})
    running = wait_until(lambda: api(sock, "GET", "/v1/status")[1]["running"], what="running")
    status, _ = api(sock, "POST", f"/v1/builds/{running[0]['build_id']}/cancel")
    assert status == 202
    wait_until(lambda: api(sock, "GET", f"/v1/builds/{running[0]['build_id']}")[1]["outcome"]
               == "cancelled", what="cancelled")

    # Events: an NDJSON stream carrying what the logs carry.
    conn = UnixHTTPConnection(sock)
    conn.request("GET", "/v1/events")
    events = conn.getresponse()
    api(sock, "POST", "/v1/builds", {"layers": ["base"]})
    # The cancelled run may still be ending: its run_finished can come first.
    line = json.loads(events.readline())
    while line["event"] != "trigger_received":
        line = json.loads(events.readline())
    assert line["layers"] == ["base"]
    conn.close()

    assert api(sock, "POST", "/v1/reload") == (200, {"reloaded": True, "layers": 2})
    status, text = api(sock, "GET", "/metrics")
    assert status == 200 and 'orchestrator_builds_total{layer="child",outcome="built"}' in text
    assert "orchestrator_queue_depth" in text


def test_bad_requests_get_json_errors(daemon: DaemonProcess) -> None:
    sock = daemon.socket
    assert api(sock, "POST", "/v1/builds", raw=b"{not json")[0] == 400
    status, body = api(sock, "POST", "/v1/builds", raw=b"{not json")
    assert "malformed JSON" in body["message"]
    status, body = api(sock, "POST", "/v1/builds", {"layers": ["nope"]})
    assert status == 404 and "unknown layer 'nope'" in body["message"]
    status, body = api(sock, "POST", "/v1/builds", {"layers": "child"})
    assert status == 400 and "layers" in body["message"]
    status, body = api(sock, "GET", "/v1/reload")
    assert status == 405 and "message" in body
    status, body = api(sock, "GET", "/v1/nothing-here")
    assert status == 404 and "message" in body
    status, body = api(sock, "POST", "/v1/builds", raw=b"[" + b"1," * (1024 * 1024) + b"1]")
    assert status == 413 and "message" in body
    assert api(sock, "GET", "/v1/builds/doesnotexist")[0] == 404


def test_a_stalled_client_gets_408_and_others_are_served(daemon: DaemonProcess) -> None:
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(str(daemon.socket))
    stalled.sendall(b"POST /v1/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"layers\"")
    started = time.monotonic()
    # Meanwhile everyone else is answered at once.
    for _ in range(5):
        assert api(daemon.socket, "GET", "/v1/_ping", timeout=2)[0] == 200
    assert time.monotonic() - started < 2
    stalled.settimeout(30)
    answer = stalled.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408") and '"message"' in answer
    assert "Connection: close" in answer
    # ... and the connection is closed right after the answer, not held open
    # while the server lingers for a body that is not coming.
    answered = time.monotonic()
    stalled.settimeout(5)
    rest = b""
    while chunk := stalled.recv(4096):
        rest += chunk
    assert time.monotonic() - answered < 1, "the connection outlived the 408"
    stalled.close()


def test_no_daemon_is_exit_3(project: Project) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--socket",
                           str(project.root / "absent.sock")], capture_output=True, text=True)
    assert proc.returncode == 3 and "no daemon answers" in proc.stderr


def test_cli_verbs(daemon: DaemonProcess) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", "-c",
                               str(daemon.project.config), *args], capture_output=True,
                              text=True, timeout=60)

    out = cli("status")
    assert out.returncode == 0 and out.stdout.startswith("orchestrator ready (pid")
    out = cli("trigger", "child", "--force")
    assert out.returncode == 0 and out.stdout.startswith("queued child as r-")
    assert cli("trigger", "nope").returncode == 2
    daemon.idle()
    out = cli("history", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["builds"]
    out = cli("history")
    assert "child" in out.stdout and "manual trigger by uid" in out.stdout
    build_id = json.loads(cli("history", "--json").stdout)["builds"][0]["id"]
    assert "line-two" in cli("logs", build_id).stdout
    assert cli("cancel", build_id).returncode == 1  # not running: refused
    assert cli("reload").returncode == 0


def test_notify_sequence_and_watchdog(project: Project, testbed: Testbed,
                                      tmp_path: Path) -> None:
    small_catalog(project, testbed)
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    messages: list[str] = []

    def collect() -> None:
        listener.settimeout(1)
        while True:
            try:
                data = listener.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            messages.extend(f for f in data.split("\n") if not f.startswith(("STATUS=",
                                                                             "MONOTONIC")))

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    daemon = DaemonProcess(project, env={"NOTIFY_SOCKET": address,
                                         "WATCHDOG_USEC": "400000"}).ready()
    # The watchdog ticks from the start (a full state dir may delay READY): wait
    # for pings after READY too.
    wait_until(lambda: "READY=1" in messages and
               messages[messages.index("READY=1"):].count("WATCHDOG=1") >= 2, 10,
               what="watchdog pings after READY")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "RELOADING=1" in messages, 10, what="reload")
    wait_until(lambda: messages.count("READY=1") >= 2, 10, what="ready after reload")
    assert daemon.stop() == 0
    wait_until(lambda: "STOPPING=1" in messages, 5, what="stopping")
    listener.close()
    order = [m for m in messages if m != "WATCHDOG=1"]
    assert order[:4] == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], messages
    ready = messages.index("READY=1")
    assert "WATCHDOG=1" in messages[ready:messages.index("RELOADING=1")]


def test_socket_activation(project: Project, testbed: Testbed, tmp_path: Path) -> None:
    small_catalog(project, testbed)
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    fd = listener.fileno()

    def as_fd_3() -> None:
        os.dup2(fd, 3)

    # LISTEN_PID must be the daemon's own pid: the shell sets it, then execs.
    proc = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" -m orchestrator '
         f'-c "{project.config}" run'],
        # close_fds runs after preexec_fn: keep 3 open as well as the original.
        pass_fds=(fd, 3), preexec_fn=as_fd_3, cwd=project.root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _ping(path), 60, what="activated socket answers")
        assert not (project.root / "control.sock").exists()  # nothing else was bound
        status, body = api(path, "GET", "/v1/status")
        assert status == 200 and body["pid"] == proc.pid
    finally:
        proc.terminate()
        proc.wait(60)
        listener.close()


def _ping(path: Path) -> bool:
    try:
        return api(path, "GET", "/v1/_ping", timeout=2)[0] == 200
    except OSError:
        return False
