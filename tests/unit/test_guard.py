"""The builder guard: nothing a builder starts outlives it or the daemon; logs stay bounded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.engines.guard import MARKER, marker_end
from orchestrator.engines.runner import SubprocessRunner


def alive(tag: str) -> list[int]:
    """Pids of processes whose command line carries ``tag`` (a regular expression:
    the guard's and the shell's own command lines carry a builder's whole argv,
    so ``^sleep …`` is how to name the sleep alone)."""
    out = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_gone(tag: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while alive(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(tag), f"still running: {tag}"


async def test_output_and_exit_status_pass_through(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    rc = await SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2; exit 3"], log=log)
    assert rc == 3
    text = log.read_text()
    assert "out\n" in text and "err\n" in text
    assert oct(log.stat().st_mode & 0o777) == oct(0o640)


async def test_a_daemonised_grandchild_is_stopped_when_the_builder_exits(tmp_path: Path) -> None:
    tag = f"sleep 7{os.getpid() % 1000}1"
    # setsid + background: a new session and process group, orphaned at once.
    rc = await SubprocessRunner().run(["sh", "-c", f"setsid sh -c '{tag}' & echo started"],
                                      log=tmp_path / "b.log")
    assert rc == 0
    wait_gone(tag, 10)


def test_kill_9_of_the_daemon_stops_the_whole_builder_tree(tmp_path: Path) -> None:
    tag = f"sleep 8{os.getpid() % 1000}2"
    # A stand-in daemon: runs a builder whose shell waits on a long child (as
    # buildah's RUN does), then dies by SIGKILL without any chance to clean up.
    script = tmp_path / "daemon.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from orchestrator.engines.runner import SubprocessRunner
        asyncio.run(SubprocessRunner(stop_grace_s=2).run(
            ["sh", "-c", "echo begin; {tag}; echo end"], log=Path({str(tmp_path / 'b.log')!r})))
    """))
    daemon = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 20
    while not alive(f"^{tag}") and time.monotonic() < deadline:  # the builder's own child
        time.sleep(0.05)
    assert alive(f"^{tag}")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    wait_gone(tag, 10)
    wait_gone(f"guard.py {tmp_path / 'b.log'}", 10)  # the guard itself, last
    log = (tmp_path / "b.log").read_text()
    assert "begin" in log and "[orchestrator: builder stopped]" in log


async def test_cancel_stops_the_tree(tmp_path: Path) -> None:
    import asyncio

    tag = f"sleep 9{os.getpid() % 1000}3"
    task = asyncio.create_task(SubprocessRunner(stop_grace_s=2).run(
        ["sh", "-c", f"{tag}; true"], log=tmp_path / "b.log"))
    for _ in range(100):
        if alive(tag):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    wait_gone(tag, 10)


async def test_a_huge_log_keeps_its_head_and_tail_within_the_cap(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    cap = 1024 * 1024
    # 20 MB of numbered lines: the head and the very last lines must survive.
    producer = "awk 'BEGIN { for (i = 0; i < 300000; i++) printf \"line %d %040d\\n\", i, 0 }'"
    runner = SubprocessRunner(log_cap_bytes=cap)
    rc = await runner.run(["sh", "-c", producer], log=log)
    assert rc == 0
    data = log.read_bytes()
    assert len(data) <= cap + 64 * 1024
    assert b"line 0 " in data[:4096]
    assert data.count(MARKER) == 1 and data.index(MARKER) + len(MARKER) == marker_end(cap)
    assert data.rstrip().endswith(b"line 299999 " + b"0" * 40)


async def test_a_query_that_never_answers_is_stopped_at_its_deadline() -> None:
    tag = f"sleep 6{os.getpid() % 1000}4"
    started = time.monotonic()
    out = await SubprocessRunner().capture(["sh", "-c", f"{tag}; true"], timeout_s=0.5)
    assert out.returncode == 124 and "did not answer within 0.5 s" in out.stderr
    assert time.monotonic() - started < 10
    wait_gone(f"^{tag}", 10)


async def test_a_hung_engine_fails_its_health_check(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.engines.buildah as buildah_module
    from orchestrator.core.errors import BackendError
    from orchestrator.core.model import BuildahConfig

    hung = tmp_path / "buildah"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")  # a wedged storage lock, say
    hung.chmod(0o755)
    monkeypatch.setattr(buildah_module, "PING_TIMEOUT_S", 0.5)
    builder = buildah_module.BuildahBuilder(BuildahConfig(command=str(hung)), SubprocessRunner())
    with pytest.raises(BackendError, match="did not answer"):
        await builder.ping()
