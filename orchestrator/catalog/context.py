"""Reading a layer's build context into build-key inputs (files, modes, hashes)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.catalog.tomlfile import display
from orchestrator.core.dockerignore import DockerIgnore
from orchestrator.core.errors import InputError
from orchestrator.core.model import FileEntry, Layer

# layer.toml is the orchestrator's metadata about the layer, not build input:
# its effect on the image (args, parent) enters the key on its own, and a new
# matrix value must not change the key of every existing variant.
METADATA_FILES = frozenset({"layer.toml"})
_CHUNK = 1 << 20


# path -> (inode, size, mtime in ns, sha256). The daemon rescans contexts on
# every run and status view: a file whose stat is unchanged is not read again.
_DIGESTS: dict[str, tuple[int, int, int, str]] = {}
_DIGESTS_MAX = 200_000


def file_digest(path: Path) -> str:
    info = path.stat()
    key = str(path)
    cached = _DIGESTS.get(key)
    if cached is not None and cached[:3] == (info.st_ino, info.st_size, info.st_mtime_ns):
        return cached[3]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if len(_DIGESTS) >= _DIGESTS_MAX:
        _DIGESTS.clear()  # crude, but bounded; a full rescan costs one read per file
    _DIGESTS[key] = (info.st_ino, info.st_size, info.st_mtime_ns, digest)
    return digest


def load_dockerignore(folder: Path) -> DockerIgnore:
    path = folder / ".dockerignore"
    try:
        return DockerIgnore.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DockerIgnore([])
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(display(path), f"cannot read: {exc}") from exc


def scan_context(folder: Path) -> tuple[FileEntry, ...]:
    """Every file the builder would receive, sorted by path.

    Raises InputError for a symlink that points outside the context: the
    builder would send a dangling link, and the key could not see the target.
    """
    ignore = load_dockerignore(folder)
    root = folder.resolve()
    entries: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        keep_dirs = []
        for name in sorted(dirnames):
            rel = rel_dir + name
            full = Path(dirpath, name)
            if full.is_symlink():
                filenames.append(name)  # record the link itself, never descend
                continue
            if ignore.may_include_below(rel):
                keep_dirs.append(name)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            rel = rel_dir + name
            if (not rel_dir and name in METADATA_FILES) or ignore.excluded(rel):
                continue
            entries.append(_entry(root, Path(dirpath, name), rel))
    entries.sort(key=lambda e: e.path)
    return tuple(entries)


def _entry(root: Path, full: Path, rel: str) -> FileEntry:
    info = full.lstat()
    # Only the file type and the executable bit: that is what git keeps, so
    # the same commit checked out under another umask gives the same key.
    perms = 0o755 if info.st_mode & 0o111 else 0o644
    mode = stat.S_IFMT(info.st_mode) | perms
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(full)
        resolved = Path(os.path.normpath(full.parent / target))
        if resolved != root and root not in resolved.parents:
            raise InputError(display(full), f"symlink escapes the build context (-> {target}); "
                             "copy the file into the layer folder instead")
        return FileEntry(rel, mode, hashlib.sha256(target.encode()).hexdigest())
    if stat.S_ISREG(info.st_mode):
        return FileEntry(rel, mode, file_digest(full))
    return FileEntry(rel, mode, "")  # fifo, socket, device: only the mode matters


@dataclass(frozen=True)
class Context:
    """A layer's build input as read from disk: the Dockerfile and context files."""

    dockerfile: str
    files: tuple[FileEntry, ...]


def read_context(layer: Layer) -> Context:
    return Context(file_digest(layer.dockerfile), scan_context(layer.folder))


def read_contexts(layers: Iterable[Layer]) -> dict[str, Context]:
    """Contexts by layer id; matrix variants share their folder's single scan.
    Run before any build so a bad context (an escaping symlink) stops the run
    as bad input instead of failing halfway through it."""
    by_folder: dict[tuple[Path, Path], Context] = {}
    out: dict[str, Context] = {}
    for layer in layers:
        key = (layer.folder, layer.dockerfile)
        if key not in by_folder:
            by_folder[key] = read_context(layer)
        out[layer.id] = by_folder[key]
    return out
