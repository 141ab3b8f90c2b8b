"""The engine builds from a private copy of exactly the files the key was made from.

Between reading a context and the engine reading it there can be minutes (a
parent building, a long RUN before COPY); an edit in that window would land in
an image tagged with the old key. So each build gets a snapshot in the state
directory: every file, link and directory of the hashed set, with the modes
the key recorded, and every copied file's content hashed again from the copy.
If a file changed since it was hashed, the snapshot is refused
(:class:`ContextChanged`) and the layer is built again from a fresh read; the
engine never sees a byte the key does not describe. The Dockerfile is copied
beside the context, outside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
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


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy and hash in one pass: the digest is of exactly the bytes written."""
    h = hashlib.sha256()
    with src.open("rb") as fin, dst.open("xb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


def make_snapshot(layer: Layer, context: Context, dest: Path) -> tuple[Path, Path]:
    """Copy ``context`` (as hashed) to ``dest/context`` and the Dockerfile to
    ``dest/Dockerfile``; returns (context dir, Dockerfile path)."""
    source = layer.context.resolve()
    root = dest / "context"
    root.mkdir(parents=True)
    made = {root}
    dirs: list[tuple[Path, int, int]] = []
    for entry in context.files:
        src = source / entry.path.rstrip("/")
        dst = root / entry.path.rstrip("/")
        kind = stat.S_IFMT(entry.mode)
        try:
            info = src.lstat()
        except FileNotFoundError:
            raise ContextChanged(layer.id, entry.path) from None
        if stat.S_IFMT(info.st_mode) != kind:
            raise ContextChanged(layer.id, entry.path)
        if kind == stat.S_IFDIR:
            if dst not in made:
                dst.mkdir(parents=True, exist_ok=True)
                made.add(dst)
            dirs.append((dst, entry.mode, info.st_mtime_ns))
            continue
        if dst.parent not in made:  # entries are sorted: a parent comes first
            dst.parent.mkdir(parents=True, exist_ok=True)
            made.add(dst.parent)
        if kind == stat.S_IFLNK:
            target = os.readlink(src)
            if hashlib.sha256(target.encode()).hexdigest() != entry.digest:
                raise ContextChanged(layer.id, entry.path)
            os.symlink(target, dst)
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
            continue
        try:
            copied = _copy_hashed(src, dst)
        except FileNotFoundError:
            raise ContextChanged(layer.id, entry.path) from None
        if copied != entry.digest:
            raise ContextChanged(layer.id, entry.path)
        os.chmod(dst, stat.S_IMODE(entry.mode))
        # Keep the source's times: engines that do not clamp them copy them into
        # the image, and the snapshot must give the same image as the folder would.
        os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
    # Directories last, deepest first: their modes may forbid writing into them,
    # and writing into them moves their times.
    for path, mode, mtime_ns in sorted(dirs, key=lambda d: -len(d[0].parts)):
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, ns=(mtime_ns, mtime_ns))
    dockerfile = dest / "Dockerfile"
    try:
        copied = _copy_hashed(layer.dockerfile, dockerfile)
    except FileNotFoundError:
        raise ContextChanged(layer.id, layer.dockerfile.name) from None
    if copied != context.dockerfile:
        raise ContextChanged(layer.id, layer.dockerfile.name)
    return root, dockerfile


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


@contextlib.contextmanager
def snapshot(layer: Layer, context: Context, dest: Path) -> Iterator[tuple[Path, Path]]:
    """A snapshot for one build, removed afterwards whatever happens."""
    try:
        yield make_snapshot(layer, context, dest)
    finally:
        remove_tree(dest)
