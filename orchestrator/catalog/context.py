"""Reading a layer's build context into build-key inputs (files, modes, hashes).

What the key covers is exactly what the engine is given: the files and
directories the engine's own ignore file keeps (``.dockerignore``, or
``.containerignore`` / ``<Dockerfile>.dockerignore`` where that engine reads
those), matched with that engine's own rules (``core/dockerignore.py``), each
with its relative path, permission bits and content; symlinks by their
target. All permission bits are hashed: BuildKit copies setuid/setgid, buildah
strips them on COPY, so for buildah a flip of those bits rebuilds an image
that comes out the same (never the other way round). The build itself then
runs on a private copy of exactly these files (``build/snapshot.py``), so the
engine can never see anything else.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.catalog.digests import digest_of, file_digest
from orchestrator.catalog.tomlfile import display, is_folder, read_text_file
from orchestrator.core.buildkey import first_changed_path
from orchestrator.core.dockerignore import DockerIgnore, ignore_file_for
from orchestrator.core.errors import InputError
from orchestrator.core.model import FileEntry, Layer

# layer.toml is the orchestrator's metadata about the layer, not build input:
# its effect on the image (args, parent) enters the key on its own, and a new
# matrix value must not change the key of every existing variant.
METADATA_FILES = frozenset({"layer.toml"})
PERMISSIONS = 0o7777


def ignore_file(layer: Layer, engines: Iterable[str],
                listed: Mapping[str, os.DirEntry[str]] | None = None) -> str | None:
    """The ignore file (relative to the context) the configured engines read.

    The key must not depend on which engine of a pool builds the layer: when
    the engines would read different files here, that is a configuration error
    (so is the same file meaning different things to them: see read_context).
    ``listed``: the context folder's entries by name, when the caller listed it
    already (the candidates at its top are then looked up, not stat-ed)."""
    # String work: this runs for every layer on every scan.
    context, dockerfile = str(layer.context), str(layer.dockerfile)
    if dockerfile.startswith(context.rstrip("/") + "/"):
        dockerfile_rel = dockerfile[len(context.rstrip("/")) + 1:]
    else:
        dockerfile_rel = layer.dockerfile.name

    def exists(rel: str) -> bool:
        if listed is None or "/" in rel:
            return os.path.isfile(os.path.join(context, rel))
        entry = listed.get(rel)
        try:  # as os.path.isfile: a regular file, through a link
            return entry is not None and entry.is_file()
        except OSError:
            return False

    chosen = {engine: ignore_file_for(engine, dockerfile_rel, exists) for engine in engines}
    names = set(chosen.values())
    if len(names) > 1:
        detail = ", ".join(f"{engine} reads {name or 'none'}" for engine, name in
                           sorted(chosen.items()))
        raise InputError(display(context), f"the builders would read different ignore files "
                         f"({detail}): keep one ignore file so every engine sends the same "
                         "context")
    return names.pop() if names else None


def load_ignore(context: Path, name: str | None, engine: str = "buildah") -> DockerIgnore:
    """The ignore file as ``engine`` reads it (a byte-order mark, for one, is
    stripped by Docker and kept by buildah: the engine's parser decides)."""
    if name is None:
        return DockerIgnore([], engine)
    path = context / name
    try:
        ignore = DockerIgnore.parse(read_text_file(path), engine)
    except FileNotFoundError:
        return DockerIgnore([], engine)
    if ignore.error is not None:
        raise InputError(display(path), f"{engine} would refuse this file and fail the build: "
                         f"{ignore.error}")
    return ignore


def _listing(folder: str) -> tuple[list[os.DirEntry[str]], list[os.DirEntry[str]]]:
    """A folder's (directories, everything else), each sorted by name, as
    ``os.walk`` splits them: a symlink to a directory counts as a directory."""
    dirs: list[os.DirEntry[str]] = []
    others: list[os.DirEntry[str]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            (dirs if is_folder(entry) else others).append(entry)
    dirs.sort(key=_name)
    others.sort(key=_name)
    return dirs, others


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def scan(context: Path, ignore: DockerIgnore, root: str | None = None,
         top: tuple[list[os.DirEntry[str]], list[os.DirEntry[str]]] | None = None,
         ) -> tuple[tuple[FileEntry, ...], int]:
    """Every file, symlink and directory the builder would receive, sorted by path.
    Directories are entries too (``path/``): an empty one, or a mode change on
    one, changes the image.

    Raises InputError for a symlink that points outside the context (the builder
    would send a dangling link, and the key could not see the target) and for
    anything that cannot be read, naming the path.

    Plain ``os.scandir`` on strings: the daemon rescans every context on each
    run and status view, and each entry's lstat comes with the listing.
    ``root``: ``context`` already resolved. Also returns the size in bytes of
    the regular files (where a build's snapshot of them can go depends on it).
    ``top``: ``_listing(root)``, when the caller made it already."""
    root = root or os.path.realpath(context)
    entries: list[FileEntry] = []
    size = 0
    kept_dirs: set[str] = set()  # directories the rules keep (an empty one too)
    seen_dirs: dict[str, os.DirEntry[str]] = {}
    walk_errors: list[OSError] = []
    pending = [(root, "")]
    while pending:
        folder, rel_dir = pending.pop()
        if top is not None and not rel_dir:
            dirs, others = list(top[0]), list(top[1])  # others grows below: a copy
        else:
            try:
                dirs, others = _listing(folder)
            except OSError as exc:
                walk_errors.append(exc)
                continue
        for dir_entry in dirs:
            rel = rel_dir + dir_entry.name
            if dir_entry.is_symlink():
                others.append(dir_entry)  # record the link itself, never descend
                continue
            seen_dirs[rel] = dir_entry
            if not ignore.excluded(rel, directory=True):
                kept_dirs.add(rel)
            if ignore.may_include_below(rel):
                pending.append((dir_entry.path, rel + "/"))
        for item in others:
            rel = rel_dir + item.name
            if (not rel_dir and item.name in METADATA_FILES) or ignore.excluded(rel):
                continue
            entry = _entry(root, item, rel)
            if entry is not None:
                entries.append(entry)
                if stat.S_ISREG(entry.mode):  # the lstat _entry made, kept by the DirEntry
                    size += item.stat(follow_symlinks=False).st_size
    # A folder removed while we walked (a build tool's temp dir) is not sent either.
    walk_errors = [e for e in walk_errors if not isinstance(e, FileNotFoundError)]
    if walk_errors:
        error = walk_errors[0]
        raise InputError(display(Path(error.filename or root)), f"cannot read: "
                         f"{error.strerror or error}: make it readable or list it in the "
                         "ignore file")
    # Every parent of a kept entry is sent too, whatever the rules say of it.
    for entry in entries:
        parts = entry.path.split("/")[:-1]
        kept_dirs.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    for rel in kept_dirs:
        try:
            seen = seen_dirs.get(rel)
            info = seen.stat(follow_symlinks=False) if seen is not None else \
                os.lstat(os.path.join(root, rel))
        except FileNotFoundError:
            continue  # gone since the walk; the snapshot then finds the change
        except OSError as exc:
            raise InputError(display(Path(root, rel)), f"cannot read: {exc.strerror}") from exc
        entries.append(FileEntry(rel + "/", stat.S_IFDIR | (info.st_mode & PERMISSIONS), ""))
    entries.sort(key=lambda e: e.path)
    return tuple(entries), size


def _entry(root: str, item: os.DirEntry[str], rel: str) -> FileEntry | None:
    try:
        info = item.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # deleted while we looked (an editor's probe file): not sent either
    except OSError as exc:
        raise InputError(display(Path(item.path)), f"cannot read: {exc.strerror}: make it "
                         "readable or list it in the ignore file") from exc
    mode = stat.S_IFMT(info.st_mode) | (info.st_mode & PERMISSIONS)
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(item.path)
        except FileNotFoundError:
            return None  # deleted while we looked
        except OSError as exc:
            raise InputError(display(Path(item.path)), f"cannot read the link: "
                             f"{exc.strerror}") from exc
        resolved = os.path.normpath(os.path.join(os.path.dirname(item.path), target))
        if resolved != root and not resolved.startswith(root.rstrip("/") + "/"):
            raise InputError(display(Path(item.path)), f"symlink escapes the build context "
                             f"(-> {target}); copy the file into the layer folder instead")
        return FileEntry(rel, mode, hashlib.sha256(target.encode()).hexdigest())
    if stat.S_ISREG(info.st_mode):
        try:
            return FileEntry(rel, mode, digest_of(item.path, info))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(display(Path(item.path)), f"cannot read: {exc.strerror}: make "
                             "it readable or list it in the ignore file") from exc
    return None  # fifo, socket, device: the engines do not copy them


@dataclass(frozen=True)
class Context:
    """A layer's build input as read from disk: the Dockerfile and context files."""

    dockerfile: str
    files: tuple[FileEntry, ...]
    ignore_file: str | None = None  # which ignore file selected ``files``
    size: int = 0  # bytes in the regular files of ``files``, as scanned
    root: str = ""  # the context folder, resolved, as it was scanned


class SharedParents:
    """``os.path.realpath`` for many folders under a few parents (a catalog's
    layers), each parent resolved once: realpath is pure Python, an lstat per
    path component. One per scan pass, so a parent link repointed between
    passes (an atomic deploy) is seen by the next."""

    def __init__(self) -> None:
        self._parents: dict[str, str] = {}

    def __call__(self, folder: Path) -> str:
        parent, name = os.path.split(os.fspath(folder))
        real_parent = self._parents.get(parent)
        if real_parent is None:
            real_parent = self._parents[parent] = os.path.realpath(parent)
        path = os.path.join(real_parent, name)
        if name in ("", ".", "..") or os.path.islink(path):
            return os.path.realpath(path)
        return path


def read_context(layer: Layer, engines: Iterable[str] = ("buildah",),
                 resolve: Callable[[Path], str] = os.path.realpath) -> Context:
    """Raises InputError for anything wrong with the context, naming the path.
    ``resolve``: how the context folder is resolved (see SharedParents)."""
    try:
        return _read_context(layer, engines, resolve)
    except InputError:
        raise
    except OSError as exc:  # whatever the filesystem does, a failed layer, not a dead daemon
        where = Path(exc.filename) if exc.filename else layer.context
        raise InputError(display(where), f"cannot read: {exc.strerror or exc}") from exc


def _read_context(layer: Layer, engines: Iterable[str],
                  resolve: Callable[[Path], str]) -> Context:
    try:
        dockerfile = file_digest(layer.dockerfile)
    except OSError as exc:
        raise InputError(display(layer.dockerfile), f"cannot read: {exc.strerror}") from exc
    kinds = sorted(set(engines)) or ["buildah"]
    root = resolve(layer.context)
    # The context's top listed once: it answers which ignore file exists there
    # (four stat calls otherwise) and starts every engine's scan.
    try:
        top: tuple[list[os.DirEntry[str]], list[os.DirEntry[str]]] | None = _listing(root)
    except OSError:
        top = None  # the scan meets the same error and reports it
    listed = None if top is None else {entry.name: entry for entry in (*top[0], *top[1])}
    name = ignore_file(layer, kinds, listed)
    scans = {kind: scan(layer.context, load_ignore(layer.context, name, kind), root, top)
             for kind in kinds}
    first, *others = kinds
    for kind in others:
        if scans[kind][0] != scans[first][0]:
            path = first_changed_path(scans[first][0], scans[kind][0]) or "?"
            raise InputError(display(layer.context / (name or ".dockerignore")),
                             f"{first} and {kind} match this ignore file differently (e.g. "
                             f"{path}), so the image would depend on the engine that builds "
                             "it: simplify the patterns, or use one kind of engine")
    files, size = scans[first]
    return Context(dockerfile, files, name, size, root)


def read_contexts(layers: Iterable[Layer], engines: Iterable[str] = ("buildah",)
                  ) -> dict[str, Context | InputError]:
    """Contexts by layer id; matrix variants share their folder's single scan.
    Run before any build. A context that cannot be read is that layer's error
    (the layer fails with it; the others go on)."""
    kinds = tuple(sorted(set(engines)))
    by_folder: dict[tuple[Path, Path], Context | InputError] = {}
    out: dict[str, Context | InputError] = {}
    resolve = SharedParents()
    for layer in layers:
        key = (layer.context, layer.dockerfile)
        if key not in by_folder:
            try:
                by_folder[key] = read_context(layer, kinds, resolve)
            except InputError as exc:
                by_folder[key] = exc
        out[layer.id] = by_folder[key]
    return out
