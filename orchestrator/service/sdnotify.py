"""systemd's notify protocol and socket activation, without libsystemd."""

from __future__ import annotations

import contextlib
import os
import socket

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1, STATUS=… to $NOTIFY_SOCKET.
    A no-op when the daemon was not started by systemd (or a test standing in)."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if address:
            # "@name" is Linux's abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, *fields: str) -> None:
        if self._sock is None or self._address is None:
            return
        # If the manager went away there is nothing useful to do about it.
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(fields).encode(), self._address)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC (as sd_watchdog_enabled advises), when meant for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2 / 1_000_000
    except ValueError:
        return None


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS), when meant for us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)  # builders must not inherit the listener
        socks.append(socket.socket(fileno=fd))
    return socks


def forget_activation_env() -> None:
    """Drop systemd's per-process variables so nothing we start sees them."""
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                 "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
