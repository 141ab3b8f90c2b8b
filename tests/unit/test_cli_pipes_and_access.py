"""The client verbs at the edges a shell puts them in: a reader that leaves
(``| head``) and a user outside the socket's group."""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STATUS = {"phase": "ready", "pid": 1, "uptime_s": 3, "backend": {"name": "buildah",
                                                                 "error": None},
          "queue": [], "builders": [], "upstreams": {}}
LAYERS = {"layers": [{"layer": f"layer{i}", "parent": None, "state": "up_to_date"}
                     for i in range(200)]}


class FakeDaemon(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(STATUS if self.path == "/v1/status" else LAYERS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, str]:
        conn, _ = self.socket.accept()
        return conn, "local"  # http.server wants a printable client address


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "control.sock"
    server = UnixServer(str(path), FakeDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_with_closed_stdout(*args: str) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, env=_env(),
                              cwd=ROOT)
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


def test_status_into_a_closed_pipe_ends_quietly(fake_daemon: Path) -> None:
    code, stderr = run_with_closed_stdout("status", "--socket", str(fake_daemon))
    assert stderr == "" and code == 141  # as a shell reports a tool SIGPIPE ended


def test_every_printing_command_ends_quietly_on_a_closed_pipe(fake_daemon: Path) -> None:
    for args in (("status", "--json", "--socket", str(fake_daemon)),
                 ("-c", str(ROOT / "examples/demo/config.toml"), "graph")):
        code, stderr = run_with_closed_stdout(*args)
        assert (code, stderr) == (141, ""), args


def test_status_piped_to_head_prints_the_head(fake_daemon: Path) -> None:
    proc = subprocess.run(f'"{sys.executable}" -m orchestrator status --socket '
                          f'"{fake_daemon}" | head -3', shell=True, capture_output=True,
                          text=True, timeout=60, env=_env())
    assert proc.stdout.startswith("orchestrator ready (pid 1")
    assert len(proc.stdout.splitlines()) == 3 and proc.stderr == ""


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                    reason="needs root and setpriv (util-linux) to drop DAC override")
def test_a_user_outside_the_group_is_told_to_join_it(fake_daemon: Path) -> None:
    """root without CAP_DAC_OVERRIDE meets the permission checks any other user
    does: a socket it may not open is a refusal (exit 1) naming the group, not
    "no daemon" (exit 3)."""
    os.chown(fake_daemon, 65534, 65534)
    os.chmod(fake_daemon, 0o660)
    import grp

    group = grp.getgrgid(65534).gr_name
    drop = "-dac_override,-dac_read_search"  # inheritable too: a container may keep them there
    proc = subprocess.run([str(SETPRIV), f"--bounding-set={drop}", f"--inh-caps={drop}",
                           sys.executable, "-m", "orchestrator", "status", "--socket",
                           str(fake_daemon)], capture_output=True, text=True, timeout=60,
                          env=_env(), cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert f"permission denied: join the group `{group}`" in proc.stderr
    assert "no daemon" not in proc.stderr
