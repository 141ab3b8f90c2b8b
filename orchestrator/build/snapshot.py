"""The engine builds from a private copy of exactly the files the key was made from.

Between reading a context and the engine reading it there can be minutes (a
parent building, a long RUN before COPY); an edit in that window would land in
an image tagged with the old key. So each build gets a snapshot in the state
directory: every file, link and directory of the hashed set, with the modes
the key recorded, and every copied file's content hashed again from the copy.
If a file changed since it was hashed, the snapshot is refused
(:class:`ContextChanged`) and the layer is built again from a fresh read; the
engine never sees a byte the key does not describe. The Dockerfile is copied
beside the context, outside it, with an empty ignore file of its own: the
copy is the filtered set, and the engine must not filter it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from orchestrator.catalog.context import Context
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import Layer

_CHUNK = 1 << 20


class ContextChanged(OrchestratorError):
    """A context file changed after it was hashed; the layer must be planned again."""

    def __init__(self, layer: str, path: str) -> None:
        self.layer = layer
        self.path = path
        super().__init__(f"{layer}: {path} changed while the build was being prepared; "
                         "it is planned again with the new content")


class NotRegular(OSError):
    """What was a regular file when hashed is something else now."""


def _copy_hashed(src: str, dst: str, mode: int, times_ns: tuple[int, int], *,
                 follow: bool = False) -> str:
    """Copy and hash in one pass (the digest is of exactly the bytes written),
    then give the copy ``mode`` and the source's times. A context file swapped
    for a symlink since it was listed fails to open (O_NOFOLLOW): a changed
    context. ``follow``: the Dockerfile, which may be a link."""
    h = hashlib.sha256()
    # O_NONBLOCK: a file swapped for a fifo must not block the open (it is then
    # refused below, not read).
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd_in = os.open(src, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd_in).st_mode):
            raise NotRegular(src)
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(fd_in, _CHUNK):
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd_out, view):]
            os.fchmod(fd_out, mode)
            # Keep the source's times: engines that do not clamp them copy them
            # into the image, and the snapshot must give what the folder would.
            os.utime(fd_out, ns=times_ns)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return h.hexdigest()


def _mkdir_fresh(path: str) -> None:
    try:
        os.mkdir(path)
    except FileNotFoundError:  # the first build: the builds folder itself is missing
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)


def make_snapshot(layer: Layer, context: Context, dest: Path) -> tuple[Path, Path]:
    """Copy ``context`` (as hashed) to ``dest/context`` and the Dockerfile to
    ``dest/Dockerfile``; returns (context dir, Dockerfile path). Plain ``os``
    calls on strings: a run of thousands of builds makes a snapshot for each."""
    source = str(layer.context.resolve())
    root = os.path.join(dest, "context")
    _mkdir_fresh(str(dest))
    os.mkdir(root)
    made = {root}
    dirs: list[tuple[str, int, int]] = []
    for entry in context.files:
        rel = entry.path.rstrip("/")
        src = os.path.join(source, rel)
        dst = os.path.join(root, rel)
        kind = stat.S_IFMT(entry.mode)
        try:
            info = os.lstat(src)
        except (FileNotFoundError, NotADirectoryError):
            raise ContextChanged(layer.id, entry.path) from None
        if stat.S_IFMT(info.st_mode) != kind:
            raise ContextChanged(layer.id, entry.path)
        if kind == stat.S_IFDIR:
            if dst not in made:
                os.makedirs(dst, exist_ok=True)
                made.add(dst)
            dirs.append((dst, entry.mode, info.st_mtime_ns))
            continue
        parent = os.path.dirname(dst)
        if parent not in made:  # entries are sorted: a parent comes first
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if kind == stat.S_IFLNK:
            target = os.readlink(src)
            if hashlib.sha256(target.encode()).hexdigest() != entry.digest:
                raise ContextChanged(layer.id, entry.path)
            os.symlink(target, dst)
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
            continue
        try:
            copied = _copy_hashed(src, dst, stat.S_IMODE(entry.mode),
                                  (info.st_atime_ns, info.st_mtime_ns))
        except (FileNotFoundError, NotADirectoryError, NotRegular):
            raise ContextChanged(layer.id, entry.path) from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # ELOOP: it became a symlink meanwhile
                raise
            raise ContextChanged(layer.id, entry.path) from None
        if copied != entry.digest:
            raise ContextChanged(layer.id, entry.path)
    # Directories last, deepest first: their modes may forbid writing into them,
    # and writing into them moves their times. The context folder itself keeps its
    # own mode too, not the daemon's umask (UMask=0027 under systemd), as the
    # engine would have seen it in place.
    top = os.stat(source)
    dirs.append((root, top.st_mode, top.st_mtime_ns))
    for path, mode, mtime_ns in sorted(dirs, key=lambda d: -d[0].count(os.sep)):
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, ns=(mtime_ns, mtime_ns))
    dockerfile = os.path.join(dest, "Dockerfile")
    try:
        info = os.stat(layer.dockerfile)
        copied = _copy_hashed(str(layer.dockerfile), dockerfile, 0o644,
                              (info.st_atime_ns, info.st_mtime_ns), follow=True)
    except (FileNotFoundError, NotRegular):
        raise ContextChanged(layer.id, layer.dockerfile.name) from None
    if copied != context.dockerfile:
        raise ContextChanged(layer.id, layer.dockerfile.name)
    # The copy is already filtered by the ignore file the key was made with. An
    # empty ignore file beside the Dockerfile is the first one both engines look
    # for, so neither applies the context's .dockerignore a second time (when a
    # Dockerfile.dockerignore chose the set, that would drop keyed files).
    os.close(os.open(dockerfile + ".dockerignore",
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    return Path(root), Path(dockerfile)


def remove_tree(path: Path) -> None:
    """Remove a snapshot, whatever modes its copied directories carry."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass  # a directory copied without write permission: open them up first
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                with contextlib.suppress(OSError):
                    os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _make_or_remove(layer: Layer, context: Context, dest: Path) -> tuple[Path, Path]:
    """make_snapshot, leaving nothing behind when it fails (the layer's next
    attempt makes its snapshot in the same place)."""
    try:
        return make_snapshot(layer, context, dest)
    except BaseException:
        remove_tree(dest)
        raise


class Snapshots:
    """Each build's snapshot, made before the engine starts and removed when it is
    done. In the daemon both happen on a worker thread: copying and hashing a
    large context, or deleting one, can take long enough to stall the event loop
    (the API, the systemd watchdog, every other build). ``inline`` does them on
    the loop, for a one-shot run where nothing else waits on it: a thread hop per
    build costs more there than it saves, as with the state store."""

    def __init__(self, *, inline: bool) -> None:
        self.inline = inline

    @contextlib.asynccontextmanager
    async def snapshot(self, layer: Layer, context: Context,
                       dest: Path) -> AsyncIterator[tuple[Path, Path]]:
        """A snapshot for one build; raises ContextChanged (leaving nothing) when
        a file no longer has the content its key was made from."""
        if self.inline:
            paths = _make_or_remove(layer, context, dest)
        else:
            loop = asyncio.get_running_loop()
            making = loop.run_in_executor(None, _make_or_remove, layer, context, dest)
            try:
                paths = await asyncio.shield(making)
            except asyncio.CancelledError:
                # The copy goes on in its thread; what it made goes once it ends.
                making.add_done_callback(
                    lambda _: loop.run_in_executor(None, remove_tree, dest))
                raise
        try:
            yield paths
        finally:
            if self.inline:
                remove_tree(dest)
            else:
                # Shielded: a second cancel must not leave half a tree behind.
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(
                    None, remove_tree, dest))
