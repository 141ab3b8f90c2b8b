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

The daemon reads contexts as root, and their users may change them while it
does: below the context folder nothing is reached by a path string. Folders
are walked through their descriptors, never through a name that may have
become a link since it was listed (``catalog/beneath.py``), so what is hashed
is always inside the context.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.catalog.beneath import FILE, FOLDER, Escapes, inside, open_beneath, open_inside
from orchestrator.catalog.digests import digest_at, digest_of_open, file_digest
from orchestrator.catalog.tomlfile import display, link_out_of, read_text_file
from orchestrator.core.buildkey import first_changed_path
from orchestrator.core.dockerignore import DockerIgnore, ignore_file_for
from orchestrator.core.errors import InputError
from orchestrator.core.model import FileEntry, Layer

# layer.toml is the orchestrator's metadata about the layer, not build input:
# its effect on the image (args, parent) enters the key on its own, and a new
# matrix value must not change the key of every existing variant.
METADATA_FILES = frozenset({"layer.toml"})
PERMISSIONS = 0o7777


# A folder's (subfolders, everything else) as listed through its descriptor,
# each sorted by name.
Listing = tuple[list[os.DirEntry[str]], list[os.DirEntry[str]]]


def ignore_file(layer: Layer, engines: Iterable[str],
                listed: Mapping[str, os.DirEntry[str]] | None = None) -> str | None:
    """The ignore file (relative to the context) the configured engines read.

    The key must not depend on which engine of a pool builds the layer: when
    the engines would read different files here, that is a configuration error
    (so is the same file meaning different things to them: see read_context).
    ``listed``: the context folder's entries by name, when the caller listed it
    already (the candidates at its top are then looked up, not stat-ed).

    An ignore file is looked for inside the context only: one that is a link
    counts when it leads to a regular file inside the context, and a link out
    of it is an InputError (treating it as absent would send what it hides)."""
    # String work: this runs for every layer on every scan.
    context, dockerfile = str(layer.context), str(layer.dockerfile)
    dockerfile_rel = inside(dockerfile, context) or layer.dockerfile.name

    def exists(rel: str) -> bool:
        if listed is not None and "/" not in rel:
            entry = listed.get(rel)
            if entry is None:
                return False
            try:
                if not entry.is_symlink():  # the listing's type: no call
                    return entry.is_file(follow_symlinks=False)
            except OSError:
                return False
        return _is_file_inside(context, rel)

    chosen = {engine: ignore_file_for(engine, dockerfile_rel, exists) for engine in engines}
    names = set(chosen.values())
    if len(names) > 1:
        detail = ", ".join(f"{engine} reads {name or 'none'}" for engine, name in
                           sorted(chosen.items()))
        raise InputError(display(context), f"the builders would read different ignore files "
                         f"({detail}): keep one ignore file so every engine sends the same "
                         "context")
    return names.pop() if names else None


def _is_file_inside(context: str, rel: str) -> bool:
    """As os.path.isfile(context/rel), never leaving the context."""
    path = os.path.join(context, rel)
    try:
        fd = open_inside(context, path)
    except Escapes as exc:
        raise link_out_of(path, context, exc.target) from None
    except OSError:
        return False  # missing, a link to nothing, a file where a folder should be
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def load_ignore(context: Path, name: str | None, engine: str = "buildah") -> DockerIgnore:
    """The ignore file as ``engine`` reads it (a byte-order mark, for one, is
    stripped by Docker and kept by buildah: the engine's parser decides), read
    without leaving the context."""
    if name is None:
        return DockerIgnore([], engine)
    path = context / name
    try:
        ignore = DockerIgnore.parse(read_text_file(path, beneath=context), engine)
    except FileNotFoundError:
        return DockerIgnore([], engine)
    if ignore.error is not None:
        raise InputError(display(path), f"{engine} would refuse this file and fail the build: "
                         f"{ignore.error}")
    return ignore


def _listing(folder: int) -> Listing:
    """The folder open as ``folder``: its subfolders (never a link: that is a
    file of the context, sent as a link) and everything else, each sorted by
    name. The entries' stat calls go through the descriptor, which must stay
    open while they are used."""
    dirs: list[os.DirEntry[str]] = []
    others: list[os.DirEntry[str]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            (dirs if _is_folder(entry) else others).append(entry)
    dirs.sort(key=_name)
    others.sort(key=_name)
    return dirs, others


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:  # gone since the listing (where the type needs a stat)
        return False


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def scan(folder: int, root: str, ignore: DockerIgnore, top: Listing | None = None,
         ) -> tuple[tuple[FileEntry, ...], int]:
    """Every file, symlink and directory the builder would receive, sorted by path.
    Directories are entries too (``path/``): an empty one, or a mode change on
    one, changes the image.

    Raises InputError for a symlink that points outside the context (the builder
    would send a dangling link, and the key could not see the target) and for
    anything that cannot be read, naming the path.

    ``folder``: the context folder's descriptor; ``root`` its resolved path.
    Every folder below is opened relative to its parent's descriptor with
    O_NOFOLLOW (a folder swapped for a link after it was listed is not
    entered, and not sent), every file likewise: nothing outside the context
    is read, whatever changes in it meanwhile. Each entry's lstat comes with
    the listing (one call, through the descriptor). Also returns the size in
    bytes of the regular files (where a build's snapshot of them can go
    depends on it). ``top``: ``_listing(folder)``, when the caller made it."""
    walk = _Walk(root, ignore)
    # Depth first, each folder's descriptor held until its subfolders are done:
    # descriptors stay open as deep as the tree goes, never as wide.
    frames: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    try:
        frames.append((folder, "", iter(walk.visit(folder, "", top))))
        while frames:
            parent, rel_dir, pending = frames[-1]
            dir_entry = next(pending, None)
            if dir_entry is None:
                frames.pop()
                if parent != folder:
                    os.close(parent)
                continue
            rel = rel_dir + dir_entry.name
            inner = walk.enter(parent, dir_entry.name, rel)
            if inner is not None:
                frames.append((inner, rel + "/", iter(())))  # closed by the finally from here
                frames[-1] = (inner, rel + "/", iter(walk.visit(inner, rel + "/", None)))
    finally:
        for fd, _, _ in frames:
            if fd != folder:
                os.close(fd)
    return walk.result()


class _Walk:
    """What scan finds, folder by folder."""

    def __init__(self, root: str, ignore: DockerIgnore) -> None:
        self.root = root
        self.ignore = ignore
        self.entries: list[FileEntry] = []
        self.size = 0
        self.dir_modes: dict[str, int] = {}  # every folder that may be sent, as found
        self.kept_dirs: set[str] = set()  # directories the rules keep (an empty one too)
        self.errors: list[OSError] = []

    def visit(self, folder: int, rel_dir: str,
              listing: Listing | None) -> list[os.DirEntry[str]]:
        """Record the files and links of the folder open as ``folder``; returns
        the subfolders to enter."""
        try:
            dirs, others = listing if listing is not None else _listing(folder)
        except OSError as exc:
            exc.filename = rel_dir.rstrip("/")
            self.errors.append(exc)
            return []
        descend = []
        for dir_entry in dirs:
            rel = rel_dir + dir_entry.name
            kept = not self.ignore.excluded(rel, directory=True)
            if self.ignore.may_include_below(rel):
                descend.append(dir_entry)
                if kept:
                    self.kept_dirs.add(rel)
            elif kept:  # sent, never entered: its mode now, while its parent is open
                info = _folder_info(dir_entry, self.root, rel)
                if info is not None:
                    self.dir_modes[rel] = info.st_mode
                    self.kept_dirs.add(rel)
        for item in others:
            rel = rel_dir + item.name
            if (not rel_dir and item.name in METADATA_FILES) or self.ignore.excluded(rel):
                continue
            found = _entry(folder, self.root, item, rel)
            if found is not None:
                self.entries.append(found[0])
                self.size += found[1]
        return descend

    def enter(self, parent: int, name: str, rel: str) -> int | None:
        """The subfolder ``name`` opened through its parent's descriptor, its
        mode recorded from what was opened; None when it cannot be entered."""
        try:
            fd = os.open(name, FOLDER, dir_fd=parent)
        except OSError as exc:
            # ENOTDIR: a link (or a file) since the listing: not entered, not sent;
            # ENOENT: gone, not sent either.
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                exc.filename = rel
                self.errors.append(exc)
            return None
        try:
            self.dir_modes[rel] = os.fstat(fd).st_mode
        except BaseException:
            os.close(fd)
            raise
        return fd

    def result(self) -> tuple[tuple[FileEntry, ...], int]:
        # A folder removed while we walked (a build tool's temp dir) is not sent either.
        errors = [e for e in self.errors if not isinstance(e, FileNotFoundError)]
        if errors:
            error = errors[0]
            where = error.filename if isinstance(error.filename, str) else ""
            raise InputError(display(Path(self.root, where)), f"cannot read: "
                             f"{error.strerror or error}: make it readable or list it in "
                             "the ignore file")
        entries = self.entries
        # Every parent of a kept entry is sent too, whatever the rules say of it.
        for entry in entries:
            parts = entry.path.split("/")[:-1]
            self.kept_dirs.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
        for rel in self.kept_dirs:
            mode = self.dir_modes.get(rel)
            if mode is not None:  # else gone (or no longer a folder) since it was listed
                entries.append(FileEntry(rel + "/", stat.S_IFDIR | (mode & PERMISSIONS), ""))
        entries.sort(key=lambda e: e.path)
        return tuple(entries), self.size


def _folder_info(entry: os.DirEntry[str], root: str, rel: str) -> os.stat_result | None:
    """A listed folder's lstat; None when it is gone or no longer a folder."""
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(display(Path(root, rel)), f"cannot read: {exc.strerror}") from exc
    return info if stat.S_ISDIR(info.st_mode) else None


def _entry(folder: int, root: str, item: os.DirEntry[str],
           rel: str) -> tuple[FileEntry, int] | None:
    """A listed file or link of the folder open as ``folder``, and its size in
    bytes when it is a regular file; None when it is gone, or something the
    engines do not send."""
    path = os.path.join(root, rel)
    try:
        info = item.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # deleted while we looked (an editor's probe file): not sent either
    except OSError as exc:
        raise InputError(display(Path(path)), f"cannot read: {exc.strerror}: make it "
                         "readable or list it in the ignore file") from exc
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(item.name, dir_fd=folder)
        except FileNotFoundError:
            return None  # deleted while we looked
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None  # no longer a link: changed while we looked, not sent
            raise InputError(display(Path(path)), f"cannot read the link: "
                             f"{exc.strerror}") from exc
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if resolved != root and not resolved.startswith(root.rstrip("/") + "/"):
            raise InputError(display(Path(path)), f"symlink escapes the build context "
                             f"(-> {target}); copy the file into the layer folder instead")
        mode = stat.S_IFLNK | (info.st_mode & PERMISSIONS)
        return FileEntry(rel, mode, hashlib.sha256(target.encode()).hexdigest()), 0
    if stat.S_ISREG(info.st_mode):
        try:
            read = digest_at(folder, item.name, path, info)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(display(Path(path)), f"cannot read: {exc.strerror}: make "
                             "it readable or list it in the ignore file") from exc
        if read is None:
            return None  # no longer a regular file: changed while we looked, not sent
        digest, info = read  # the file read, which an atomic save may have put there
        mode = stat.S_IFREG | (info.st_mode & PERMISSIONS)
        return FileEntry(rel, mode, digest), info.st_size
    return None  # fifo, socket, device: the engines do not copy them


@dataclass(frozen=True)
class Context:
    """A layer's build input as read from disk: the Dockerfile and context files."""

    dockerfile: str
    files: tuple[FileEntry, ...]
    ignore_file: str | None = None  # which ignore file selected ``files``
    size: int = 0  # bytes in the regular files of ``files``, as scanned
    root: str = ""  # the context folder, resolved, as it was scanned
    # That folder's (device, inode): the snapshot copies from this folder only.
    root_id: tuple[int, int] | None = None


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
    kinds = sorted(set(engines)) or ["buildah"]
    root = resolve(layer.context)
    try:
        # O_NOFOLLOW: resolved a moment ago, it is no link unless swapped since.
        folder = os.open(root, FOLDER)
    except OSError as exc:
        raise InputError(display(layer.context), f"cannot read: {exc.strerror}") from exc
    try:
        return _read_open_context(layer, kinds, root, folder)
    finally:
        os.close(folder)


def _read_open_context(layer: Layer, kinds: list[str], root: str, folder: int) -> Context:
    """read_context of the context folder open as ``folder`` (resolved: ``root``)."""
    # The context's top listed once: it answers which ignore file exists there
    # (four stat calls otherwise) and starts every engine's scan.
    try:
        top: Listing | None = _listing(folder)
    except OSError:
        top = None  # the scan meets the same error and reports it
    listed = None if top is None else {entry.name: entry for entry in (*top[0], *top[1])}
    dockerfile = _dockerfile_digest(layer, folder, root, listed)
    identity = os.fstat(folder)
    name = ignore_file(layer, kinds, listed)
    scans = {kind: scan(folder, root, load_ignore(layer.context, name, kind), top)
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
    return Context(dockerfile, files, name, size, root, (identity.st_dev, identity.st_ino))


def _dockerfile_digest(layer: Layer, folder: int, root: str,
                       listed: Mapping[str, os.DirEntry[str]] | None) -> str:
    """The Dockerfile's digest. One in the context is read as its files are,
    never through a link out of it; one outside (the layer's folder when the
    context is elsewhere, or wherever layer.toml's ``dockerfile`` points) is
    the catalog's own file, read as named."""
    path = str(layer.dockerfile)
    rel = inside(path, str(layer.context))
    try:
        if rel is None:
            return file_digest(layer.dockerfile)
        entry = listed.get(rel) if listed is not None and "/" not in rel else None
        if entry is not None and entry.is_file(follow_symlinks=False):
            read = digest_at(folder, rel, path, entry.stat(follow_symlinks=False))
            if read is not None:
                return read[0]
        fd = open_beneath(folder, rel, FILE, root)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InputError(display(path), "not a regular file (a fifo, device or "
                                 "socket): make it an ordinary file")
            return digest_of_open(fd, path, info)
        finally:
            os.close(fd)
    except Escapes as exc:
        raise link_out_of(path, layer.context, exc.target) from None
    except OSError as exc:
        raise InputError(display(path), f"cannot read: {exc.strerror}") from exc


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
