"""Acceptance: kill -9 and SIGTERM in the middle of builds; a corrupt database."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, api, daemon_config, wait_until

pytestmark = pytest.mark.integration


def slow_catalog(project: Project, testbed: Testbed, seconds: int, drain: str = "30s") -> None:
    daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                  testbed.seed_tag, drain=drain)
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("slow", 'from = "base"\n',
                  f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo begin; sleep {seconds}; "
                  "echo end\n")
    project.layer("after", 'from = "slow"\n')


def builder_processes(project: Project) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "buildah"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(project.root) in line]


def buildah_containers() -> set[str]:
    out = subprocess.run(["buildah", "containers", "-q"], capture_output=True, text=True)
    return set(out.stdout.split())


def outcomes(project: Project) -> list[tuple[str, str]]:
    db = sqlite3.connect(project.root / "state" / "state.db")
    try:
        return db.execute("SELECT layer, outcome FROM builds ORDER BY started_at").fetchall()
    finally:
        db.close()


def test_kill_9_mid_build_then_restart(project: Project, testbed: Testbed) -> None:
    slow_catalog(project, testbed, 8)
    daemon = DaemonProcess(project).ready()
    wait_until(lambda: any(b["layer"] == "slow" and b["outcome"] == "running"
                           for b in daemon.builds()), 60, what="slow build running")
    daemon.kill()  # SIGKILL: no cleanup, no chance to write anything
    # The builder does not outlive the daemon (parent-death signal).
    wait_until(lambda: not builder_processes(project), 30, what="builder gone")

    again = DaemonProcess(project).ready()
    try:
        again.idle(180)
        history = outcomes(project)
        assert ("slow", "interrupted") in history
        assert not any(layer == "slow" and outcome == "running" for layer, outcome in history)
        # Re-run after the interruption: slow and its child are built now, base reused.
        assert [o for layer, o in history if layer == "slow"] == ["interrupted", "built"]
        assert [o for layer, o in history if layer == "after"] == ["built"]
        assert [o for layer, o in history if layer == "base"] == ["built"]
        rerun = next(b for b in again.builds("slow") if b["outcome"] == "built")
        assert rerun["cause"].startswith("re-run after interrupted build")
        assert any(e["event"] == "build_interrupted" for e in again.events())
    finally:
        again.kill()


@pytest.mark.serial  # counts every buildah container on the machine: runs alone
def test_sigterm_drains_then_stops_builders_and_exits_0(
    project: Project, testbed: Testbed
) -> None:
    slow_catalog(project, testbed, 60, drain="2s")
    containers_before = buildah_containers()
    daemon = DaemonProcess(project).ready()
    wait_until(lambda: any(b["layer"] == "slow" and b["outcome"] == "running"
                           for b in daemon.builds()), 60, what="slow build running")
    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - started
    assert code == 0, daemon.logs()
    assert took < 2 + 10 + 5  # drain timeout + the builder's stop grace + margin
    assert not builder_processes(project)
    assert buildah_containers() <= containers_before  # no working containers left behind
    history = outcomes(project)
    assert ("slow", "cancelled") in history and ("after", "built") not in history
    events = [e["event"] for e in DaemonProcess.events(daemon)]
    assert events.index("daemon_stopping") < events.index("drain_timeout") \
        < events.index("daemon_stopped")
    # The queue survived: the next start builds slow again (and after) — not the base.
    db = sqlite3.connect(project.root / "state" / "state.db")
    queued = {row[0] for row in db.execute("SELECT layer FROM queue")}
    db.close()
    assert "slow" in queued


def test_sigterm_when_idle_is_prompt(project: Project, testbed: Testbed) -> None:
    slow_catalog(project, testbed, 1)
    daemon = DaemonProcess(project).ready()
    daemon.idle(120)
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5
    assert not (project.root / "control.sock").exists()


def test_a_corrupt_database_is_moved_aside(project: Project, testbed: Testbed) -> None:
    slow_catalog(project, testbed, 1)
    state = project.root / "state"
    state.mkdir(parents=True)
    (state / "state.db").write_bytes(b"this is not a database" * 100)
    daemon = DaemonProcess(project).ready()
    try:
        daemon.idle(120)
        assert any(e["event"] == "state_corrupt" for e in daemon.events())
        assert list(state.glob("state.db.corrupt-*"))
        assert api(daemon.socket, "GET", "/v1/_ping")[0] == 200
    finally:
        daemon.kill()
