"""Who owns a state directory: one daemon, or one one-shot ``build``, at a time.

A daemon that starts while a CLI build runs would record the CLI's builds as
interrupted and build the same layers again; two CLI builds would race on the
same key tags. The owner holds an exclusive ``flock`` on ``<state>/lock`` for its
whole life (the kernel drops it when the process dies, kill -9 included) and
writes who it is into the file, so the refusal can say whom to ask instead.
``plan`` only reads and takes no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.core.errors import OrchestratorError

LOCK_FILE = "lock"


class StateBusy(OrchestratorError):
    def __init__(self, state_dir: Path, holder: dict[str, Any]) -> None:
        self.holder = holder
        who = holder.get("owner", "another orchestrator")
        pid = holder.get("pid", "?")
        hint = ("; ask it with `orchestrator trigger LAYER…` (or stop it first)"
                if who == "daemon" else "; wait for it to finish")
        super().__init__(f"{state_dir} is in use by {who} (pid {pid}){hint}")


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._fd: int | None = None

    def acquire(self, owner: str) -> StateLock:
        """Take the lock or raise StateBusy naming the holder."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StateBusy(self.state_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"owner": owner, "pid": os.getpid(),
                                  "since": time.time()}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
