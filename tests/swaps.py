"""Swapping a context's folders and files for links at an exact moment of a scan
or a snapshot (never left to luck), and a record of everything opened outside
the context meanwhile.

The hooks sit on ``os.open`` and ``os.scandir`` and fire by who calls them (the
scan is in ``orchestrator.catalog``, the copy in ``orchestrator.build.snapshot``)
and by the name involved, so they hold for any implementation that opens and
lists through the ``os`` module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

SECRET = b"root:$6$what-only-root-may-read:19000:0:99999:7:::\n"
ORIGINAL = b"what the context holds\n"

Action = Callable[[], None]


def swap_for_link(path: Path, target: Path) -> None:
    """``path`` (a folder or file of the context) is moved aside, still inside
    the context, and a link to ``target`` takes its name."""
    path.rename(path.with_name(path.name + "-old"))
    path.symlink_to(target)


def swap_back(path: Path) -> None:
    path.unlink()
    path.with_name(path.name + "-old").rename(path)


class _Listing:
    """What os.scandir returns (an iterator and a context manager), over entries
    already read."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = iter(entries)

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        return self._entries

    def __next__(self) -> os.DirEntry[str]:
        return next(self._entries)

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def close(self) -> None:
        return None


class Tripwire:
    """Hooks that swap at a named moment, and the list of descriptors opened on
    anything under ``outside`` (the files no context may reach)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, outside: Path) -> None:
        self.outside = os.path.realpath(outside)
        self.opened_outside: list[str] = []
        self.fired: list[str] = []
        self._after_listing: list[tuple[str, str, Action]] = []
        self._before_open: list[tuple[str, str, Action]] = []
        real_open, real_scandir = os.open, os.scandir

        def open_(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not flags & (os.O_CREAT | os.O_DIRECTORY):
                self._fire(self._before_open, caller, os.path.basename(os.fspath(path)))
            fd = real_open(path, flags, mode, dir_fd=dir_fd)
            self._check(f"/proc/self/fd/{fd}")
            return fd

        def scandir(path: Any = ".") -> _Listing:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            where = f"/proc/self/fd/{path}" if isinstance(path, int) else os.fspath(path)
            self._check(where)
            with real_scandir(path) as listing:
                entries = list(listing)
            for entry in entries:
                self._fire(self._after_listing, caller, entry.name)
            return _Listing(entries)

        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "scandir", scandir)

    def after_listing(self, caller: str, name: str, action: Action) -> None:
        """Once, right after ``caller`` (a module name prefix) lists a folder
        holding ``name``: before it looks at any entry."""
        self._after_listing.append((caller, name, action))

    def before_open(self, caller: str, name: str, action: Action) -> None:
        """Once, right before ``caller`` opens a file called ``name`` to read it."""
        self._before_open.append((caller, name, action))

    def _fire(self, hooks: list[tuple[str, str, Action]], caller: str, name: str) -> None:
        for hook in list(hooks):
            prefix, wanted, action = hook
            if caller.startswith(prefix) and name == wanted:
                hooks.remove(hook)
                self.fired.append(f"{prefix}:{wanted}")
                action()

    def _check(self, where: str) -> None:
        try:
            real = os.readlink(where) if where.startswith("/proc/self/fd/") \
                else os.path.realpath(where)
        except OSError:
            return
        if real == self.outside or real.startswith(self.outside + "/"):
            self.opened_outside.append(real)


def files_below(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (links not followed) with its bytes."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if not path.is_symlink():
                found[str(path.relative_to(root))] = path.read_bytes()
    return found
