"""Acceptance: metrics during and after a real build, streamed logs, the status view."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, api, daemon_config, wait_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def metrics_daemon(project: Project, testbed: Testbed) -> Iterator[tuple[DaemonProcess, int]]:
    port = free_port()
    daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                  testbed.seed_tag, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("slow", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo line-one; sleep 4; "
                  "echo line-two\nUSER 1000\n")
    daemon = DaemonProcess(project).ready()
    yield daemon, port
    daemon.kill()


def test_metrics_move_and_pass_promtool(metrics_daemon: tuple[DaemonProcess, int]) -> None:
    daemon, port = metrics_daemon
    during = wait_until(lambda: (text := scrape(port)) and
                        sample(text, "orchestrator_builds_running") == 1.0 and text, 60,
                        what="a build running")
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    check = subprocess.run([promtool, "check", "metrics"], input=during, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    daemon.idle()
    after = scrape(port)
    assert sample(after, 'orchestrator_builds_total{layer="slow",outcome="built"}') == 1.0
    assert sample(after, "orchestrator_builds_running") == 0.0
    assert sample(after, 'orchestrator_build_duration_seconds_count{layer="slow"}') == 1.0
    assert sample(after, 'orchestrator_last_success_timestamp_seconds{layer="slow"}')
    assert 'orchestrator_upstream_checks_total{result="ok",upstream="seed"}' in after
    assert "orchestrator_registry_requests_total{" in after
    assert 'orchestrator_build_info{version="' in after
    # The control socket answers the same scrape.
    assert "orchestrator_builds_total" in api(daemon.socket, "GET", "/metrics")[1]


def test_logs_follow_streams_before_the_build_ends(
    metrics_daemon: tuple[DaemonProcess, int]
) -> None:
    daemon, _ = metrics_daemon
    daemon.idle()
    api(daemon.socket, "POST", "/v1/builds", {"layers": ["slow"], "force": True})
    build = wait_until(lambda: next((b for b in daemon.builds("slow")
                                     if b["outcome"] == "running"), None), 60, what="running")
    with subprocess.Popen([sys.executable, "-m", "orchestrator", "-c",
                           str(daemon.project.config), "logs", build["id"], "-f"],
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "line-one" in line and not line.startswith("$"):
                break
        # The first line arrived while the build was still running.
        assert api(daemon.socket, "GET", f"/v1/builds/{build['id']}")[1]["outcome"] \
            == "running"
        rest = proc.stdout.read()
        assert "line-two" in rest and proc.wait(30) == 0


def test_status_shows_failed_and_skipped_layers(project: Project, testbed: Testbed) -> None:
    daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                  testbed.seed_tag)
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("broken", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo 'ERROR: tests failed' >&2; "
                  "exit 3\n")
    project.layer("child", 'from = "broken"\n')
    project.layer("fine", 'from = "base"\n')
    daemon = DaemonProcess(project).ready()
    try:
        daemon.idle()
        out = subprocess.run([sys.executable, "-m", "orchestrator", "-c", str(project.config),
                              "status"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        print("\n" + out.stdout)
        lines = out.stdout.splitlines()
        assert lines[0].startswith("orchestrator ready (pid ")
        assert lines[2].startswith("base") and lines[2].endswith("up to date")
        broken = next(line for line in lines if "broken" in line)
        assert "FAILED: ERROR: tests failed" in broken and broken.startswith("├── ")
        child = next(line for line in lines if "child" in line)
        assert child.endswith("skipped: parent broken failed") and "└── child" in child
        assert next(line for line in lines if "fine" in line).endswith("up to date")
        assert "upstream watchers" in out.stdout and "next poll in" in out.stdout
        # History names the cause of every build, and the chain to the parent build.
        history = subprocess.run([sys.executable, "-m", "orchestrator", "-c",
                                  str(project.config), "history"], capture_output=True,
                                 text=True, timeout=60).stdout
        assert "fine" in history and "parent build " in history
    finally:
        daemon.kill()
