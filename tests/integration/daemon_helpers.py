"""Running the real daemon process and talking to its socket in tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import Project


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def api(sock: Path, method: str, path: str, body: Any = None,
        raw: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
    conn = UnixHTTPConnection(sock, timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        text = resp.read().decode()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class DaemonProcess:
    def __init__(self, project: Project, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.project = project
        self.socket = project.root / "control.sock"
        self.log_path = project.root / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "-c", str(project.config), "run", *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=project.root,
            env={**os.environ, **(env or {})},
        )

    def ready(self, timeout: float = 60) -> DaemonProcess:
        def ping() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            try:
                return api(self.socket, "GET", "/v1/_ping", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(ping, timeout, what="daemon ready")
        return self

    def idle(self, timeout: float = 120) -> None:
        """Wait until nothing is queued or running."""
        def quiet() -> bool:
            status = api(self.socket, "GET", "/v1/status")[1]
            return not status["queue"] and status["run"] is None

        wait_until(quiet, timeout, 0.2, "daemon idle")

    def builds(self, layer: str | None = None) -> list[dict[str, Any]]:
        query = f"?limit=1000&layer={layer}" if layer else "?limit=1000"
        return api(self.socket, "GET", "/v1/builds" + query)[1]["builds"]

    def events(self) -> Iterator[dict[str, Any]]:
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                yield json.loads(line)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def daemon_config(project: Project, registry: str, namespace: str, seed_image: str,
                  seed_tag: str, extra: str = "", drain: str = "30s",
                  poll: str = "15m", upstream_image: str | None = None) -> None:
    project.write_config(f"""
        [catalog]
        layers = "layers"
        [registry]
        url = "{registry}/{namespace}"
        tls_verify = false
        [build]
        backend = "buildah"
        jobs = 2
        [state]
        dir = "state"
        [control]
        socket = "control.sock"
        [daemon]
        debounce = "300ms"
        drain_timeout = "{drain}"
        [upstream.seed]
        image = "{upstream_image or seed_image}"
        tag = "{seed_tag}"
        tls_verify = false
        poll = "{poll}"
        {extra}
    """)
