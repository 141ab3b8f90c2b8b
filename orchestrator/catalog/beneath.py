"""Opening what lies inside a folder without ever leaving it.

The daemon runs as root and reads folders its users can write to. A path
string is looked up afresh by every call, each of its components following
whatever link stands there at that moment: a folder that was a folder when
it was listed can be a link to /etc by the time a file below it is opened.
So inside a build context nothing is reached by a path string: each step
opens one name relative to its parent folder's descriptor with O_NOFOLLOW
(and O_DIRECTORY for a folder), and a link is followed only by reading it
and resolving its text here, never by the kernel.

The folder a walk starts from (a layer's context, as layer.toml names it) is
the catalog's: it is opened by its path, links included (an atomic deploy
repoints those).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

# A folder opened to be listed or walked through: a link in its place is
# refused (ENOTDIR), not followed.
FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A file opened to be read. O_NONBLOCK: a fifo put in its place must not block
# the open (it is then refused as not a regular file, never read).
FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# As the kernel's own limit on links followed in one lookup.
MAX_LINKS = 40


class Escapes(Exception):
    """A link on the way points out of the folder the walk is confined to."""

    def __init__(self, link: str, target: str) -> None:
        self.link = link  # relative to the folder
        self.target = target
        super().__init__(f"{link} -> {target}")


def inside(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` when it names something below it (by
    its text, as layer.toml spells both), else None."""
    base = folder.rstrip("/") + "/"
    return path[len(base):] if path.startswith(base) and len(path) > len(base) else None


def confining(path: Path, context: Path) -> Path | None:
    """``context`` when ``path`` (a Dockerfile) lies in it: it is then opened
    without leaving it, as the context's own files are. None for a file outside
    (the catalog's own, read as layer.toml names it)."""
    return context if inside(str(path), str(context)) is not None else None


def open_beneath(folder: int, rel: str, flags: int = FILE,
                 root: str | Callable[[], str] = "") -> int:
    """``rel`` ("/"-separated) opened inside the folder whose descriptor is
    ``folder``: every folder on the way is opened with O_NOFOLLOW, and a link
    met on the way is followed by its text as long as that stays inside (as a
    context's links are judged when it is hashed: ``..`` by the text, not by
    the disk). ``root``: the folder's resolved path (or how to get it, asked
    only when needed), which an absolute link must lie under. Raises Escapes
    for a link out of the folder, OSError as ``open`` does otherwise
    (FileNotFoundError for a link to nothing)."""
    pending = rel.split("/")[::-1]  # the next name last
    done: list[str] = []  # the names walked from ``folder`` to ``here``
    here = folder
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if not done:
                    raise Escapes(rel, "..")
                done.pop()
                old, here = here, folder  # closed by _restart, whatever happens
                here = _restart(folder, old, done)
                continue
            last = all(rest in ("", ".") for rest in pending)
            try:
                opened = os.open(name, flags if last else FOLDER, dir_fd=here)
            except OSError as exc:
                # O_NOFOLLOW on a link: ELOOP, or ENOTDIR with O_DIRECTORY.
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:
                    target = os.readlink(name, dir_fd=here)
                except OSError:
                    raise exc from None  # not a link: a file where a folder should be
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), rel) from None
                if target.startswith("/"):
                    below = _under(target, root if isinstance(root, str) else root())
                    if below is None:
                        raise Escapes("/".join([*done, name]), target) from None
                    done = []
                    old, here = here, folder
                    here = _restart(folder, old, done)
                    target = below
                pending.extend(target.split("/")[::-1])
                continue
            if here != folder:
                os.close(here)
            here = opened
            done.append(name)
        if here == folder:  # nothing but "." and ".." that came back
            return os.open(".", flags, dir_fd=folder)
        return here
    except BaseException:
        if here != folder:
            os.close(here)
        raise


def _under(target: str, root: str) -> str | None:
    """An absolute link's target relative to ``root``, or None when outside."""
    if not root:
        return None
    target = os.path.normpath(target)
    if target == root.rstrip("/") or target == "/" == root:
        return ""
    return inside(target, root)


def _restart(folder: int, here: int, names: list[str]) -> int:
    """The folder ``names`` below ``folder``, walked again from it (after a
    ``..`` or an absolute link). ``here`` is closed first, so the caller holds
    nothing to close again if this fails."""
    if here != folder:
        os.close(here)
    here = folder
    try:
        for name in names:
            opened = os.open(name, FOLDER, dir_fd=here)
            if here != folder:
                os.close(here)
            here = opened
    except BaseException:
        if here != folder:
            os.close(here)
        raise
    return here


def open_inside(folder: str, path: str, flags: int = FILE) -> int:
    """``path``, below ``folder`` by its text, opened without leaving ``folder``
    (see open_beneath). A name directly in it that is no link takes one call."""
    rel = inside(path, folder)
    if rel is None:
        raise ValueError(f"{path} is not below {folder}")
    if "/" not in rel:
        try:
            return os.open(path, flags | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
    top = os.open(folder, FOLDER & ~os.O_NOFOLLOW)  # the catalog's path, as named
    try:
        return open_beneath(top, rel, flags, lambda: os.path.realpath(folder))
    finally:
        os.close(top)
