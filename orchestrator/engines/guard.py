"""A builder's guard: the one process between the daemon and a builder command.

Run as a script (``python3 -I -S guard.py LOG CAP GRACE -- ARGV…``), standard
library only, so it starts in a few milliseconds. It exists because a builder's
process tree must not outlive the daemon, and a builder's output must not fill
the disk:

- It dies with the daemon: the daemon sets its parent-death signal, so even a
  kill -9 of the daemon reaches the guard, which then stops the whole tree.
  Without it, buildah's ``RUN`` children (``sh -c …; sleep``) were re-parented to
  PID 1 and kept running after buildah itself had exited.
- It is a child subreaper: whatever the builder starts and orphans (a step that
  daemonises, a double fork) is re-parented here instead of to PID 1, so it is
  found and stopped too.
- It stops the tree politely first (SIGTERM to every process, so buildah removes
  its working container), then SIGKILLs what is left after a grace period.
- It copies the builder's output to the build log, capped: past ``CAP`` bytes the
  head is kept, a marker line says what was dropped, and the newest output is
  kept after it (the tail is what explains a failure).

Exit status: the builder's, or 128 + signal when it was killed by one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CHUNK = 64 * 1024
MARKER = (b"\n[orchestrator: the log passed its size cap; the middle was dropped, "
          b"the newest output follows]\n")


def marker_end(cap: int) -> int:
    """Where the kept tail starts in a capped log (readers that follow a log use it
    after the file was compacted)."""
    return cap // 2 + len(MARKER)


class CappedLog:
    """Appends to a file; past ``cap`` bytes keeps the head and the newest tail.

    The tail lives in the file after the marker; when it grows past its share
    the older half of it is dropped by rewriting (amortised: each byte is moved
    at most a few times)."""

    def __init__(self, path: str, cap: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.cap = cap
        self.failed = False  # a full disk must not stop the builder: output is then dropped
        self.head = cap // 2
        self.size = os.fstat(self.fd).st_size
        self.capped = self.size > self.head

    def write(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            self._write(data)
        except OSError:
            self.failed = True

    def _write(self, data: bytes) -> None:
        if self.cap <= 0:
            self._append(data)
            return
        if not self.capped:
            room = self.head - self.size
            if len(data) <= room:
                self._append(data)
                return
            self._append(data[:room])
            self._append(MARKER)
            self.capped = True
            data = data[room:]
        self._append(data)
        tail_share = self.cap - marker_end(self.cap)
        if self.size - marker_end(self.cap) > tail_share:
            self._compact(tail_share // 2)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def _compact(self, keep: int) -> None:
        start = marker_end(self.cap)
        keep = min(keep, self.size - start)
        newest = os.pread(self.fd, keep, self.size - keep)
        os.ftruncate(self.fd, start)
        self.size = start
        self._append(newest)


def _descendants(me: int, group: int) -> list[int]:
    """Every process below us (by parent links, whatever session it moved to),
    children re-parented to us as subreaper, and anything left in our group."""
    parents: dict[int, int] = {}
    in_group: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        if int(fields[2]) == group:
            in_group.add(int(entry))
    found = set(in_group)
    frontier = {me}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return sorted(found)


def _signal_all(sig: int, me: int, group: int) -> int:
    pids = _descendants(me, group)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return len(pids)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _drain(fd: int, log: CappedLog) -> bool:
    """Copy what the pipe holds now to the log; True at end of file."""
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        if not chunk:
            return True
        log.write(chunk)


def main(argv: list[str]) -> int:
    log_path, cap, grace = argv[1], int(argv[2]), float(argv[3])
    command = argv[argv.index("--") + 1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # our own group: stopping "the group" must never reach our caller
    me, group = os.getpid(), os.getpgrp()
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda sig, frame: stopping.append(sig))
    signal.signal(signal.SIGINT, lambda sig, frame: stopping.append(sig))
    log = CappedLog(log_path, cap)
    read_end, pid = _start(command)
    status = _follow(pid, read_end, log, stopping, grace, me, group)
    _stop_leftovers(grace, me, group)
    if stopping:
        log.write(b"\n[orchestrator: builder stopped]\n")
    return 128 - status if status < 0 else status


def _start(command: list[str]) -> tuple[int, int]:
    """Fork the builder with its output on a pipe: (the pipe's read end, its pid)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the builder
        os.close(read_end)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(2, f"orchestrator: cannot run {command[0]}: {exc}\n".encode())
        os._exit(127)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return read_end, pid


def _follow(pid: int, read_end: int, log: CappedLog, stopping: list[int], grace: float,
            me: int, group: int) -> int:
    """Copy the builder's output to the log until it exits (stopping it, politely
    then not, once asked to); its exit status."""
    status: int | None = None
    kill_at = 0.0
    while True:
        if stopping and not kill_at:
            kill_at = time.monotonic() + grace
            _signal_all(signal.SIGTERM, me, group)
        if kill_at and time.monotonic() >= kill_at:
            _signal_all(signal.SIGKILL, me, group)
            kill_at = float("inf")
        with contextlib.suppress(InterruptedError):
            select.select([read_end], [], [], 0.1)
        eof = _drain(read_end, log)
        if status is None:
            with contextlib.suppress(ChildProcessError):
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(raw)
        # Done when the builder has exited: a process it left behind may still
        # hold the pipe open, and is stopped below rather than waited for.
        if status is not None:
            _drain(read_end, log)
            return status
        if eof:
            time.sleep(0.02)


def _stop_leftovers(grace: float, me: int, group: int) -> None:
    """The builder is done; nothing it started may stay behind."""
    if _signal_all(signal.SIGTERM, me, group):
        deadline = time.monotonic() + min(grace, 5.0)
        while _signal_all(signal.SIGTERM, me, group) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.05)
        _signal_all(signal.SIGKILL, me, group)
    _reap()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
