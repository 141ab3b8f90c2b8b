"""Running builder processes: each under a guard (``guard.py``) in its own process
group, output to a capped per-build log file, a deadline, and a clean stop
(SIGTERM, then SIGKILL) when cancelled or when the daemon dies."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# systemd hands these to the daemon only; a builder that inherited them could
# answer the service manager or grab the activation socket.
_PRIVATE_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                "WATCHDOG_USEC", "WATCHDOG_PID")
STOP_GRACE_S = 10.0
# Engine queries (version, images, inspect, rm, rmi) answer in seconds; a health
# check gets less (PING_TIMEOUT_S). Past that the engine is treated as failing.
CAPTURE_TIMEOUT_S = 300.0
PING_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1
GUARD = Path(__file__).with_name("guard.py")
DEFAULT_LOG_CAP = 64 * 1024 * 1024


def _die_with_parent(daemon: int) -> None:
    """Runs in the child before exec: if the daemon dies (even by kill -9), the
    kernel sends the guard SIGTERM, and the guard stops the builder's whole tree
    instead of leaving it orphaned and pushing behind the next daemon's back."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # The daemon died before the signal was armed: we were handed to PID 1 or
    # to a subreaper (systemd --user, a container's init), never back to it.
    if os.getppid() != daemon:
        os._exit(1)


def builder_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Captured:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    async def run(self, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                  timeout_s: float | None = None) -> int | None:
        """Run to completion with output appended to ``log``; None on timeout."""
        ...

    async def capture(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                      timeout_s: float = CAPTURE_TIMEOUT_S) -> Captured:
        """Run a short query and return its output; past ``timeout_s`` the query
        is stopped and answers returncode 124 with the reason in stderr."""
        ...


class SubprocessRunner:
    def __init__(self, log_cap_bytes: int = DEFAULT_LOG_CAP,
                 stop_grace_s: float = STOP_GRACE_S) -> None:
        self.log_cap_bytes = log_cap_bytes
        self.stop_grace_s = stop_grace_s

    def guarded(self, argv: Sequence[str], log: Path) -> list[str]:
        """The builder command under its guard (isolated, no site: starts fast)."""
        return [sys.executable, "-I", "-S", str(GUARD), str(log), str(self.log_cap_bytes),
                str(self.stop_grace_s), "--", *argv]

    async def run(self, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                  timeout_s: float | None = None) -> int | None:
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, ("$ " + " ".join(argv) + "\n").encode())
            # The guard's own stderr goes to the log too: if it ever fails, the
            # build log says how.
            proc = await asyncio.create_subprocess_exec(
                *self.guarded(argv, log), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=fd,
                env=builder_env(env), start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        finally:
            os.close(fd)
        # The guard stops the tree itself within its grace; this is the backstop.
        grace = self.stop_grace_s + 5.0
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            await stop_process_group(proc, grace)
            return None
        except asyncio.CancelledError:
            # Shield the stop so a second cancel cannot leave the group running.
            await asyncio.shield(stop_process_group(proc, grace))
            raise

    async def capture(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                      timeout_s: float = CAPTURE_TIMEOUT_S) -> Captured:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=builder_env(env), start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            # A hung engine query (a wedged storage lock, a buildkitd that accepts
            # and never answers) must not hold a pool lease or a status view.
            await asyncio.shield(stop_process_group(proc, 5.0))
            return Captured(124, "", f"{argv[0]} did not answer within {timeout_s:g} s")
        except asyncio.CancelledError:
            await asyncio.shield(stop_process_group(proc))
            raise
        assert proc.returncode is not None
        return Captured(proc.returncode, out.decode(errors="replace"),
                        err.decode(errors="replace"))


async def stop_process_group(proc: asyncio.subprocess.Process,
                             grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the whole group (the builder and what it started), SIGKILL after grace."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def log_tail(log: Path, lines: int = 20) -> str:
    """The last lines of a build log, for the failure message."""
    try:
        with log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


_STEP_HEADER = re.compile(r"#\d+ \[")  # BuildKit: "#5 [2/3] RUN …"
_ERROR_LINE = re.compile(r"\b(error|failed|fatal|denied|not found|no such)\b", re.IGNORECASE)


def first_error_line(tail: str) -> str | None:
    """The line of a log tail most likely to say what went wrong: the first that
    reads like an error, skipping our own echo of the command line."""
    for line in tail.splitlines():
        # Skip our echo of the command and the engines' step headers, which
        # quote the Dockerfile (and so any word in it).
        if line.startswith(("$ ", "STEP ")) or _STEP_HEADER.match(line):
            continue
        if _ERROR_LINE.search(line):
            return line.strip()[:300]
    return None
