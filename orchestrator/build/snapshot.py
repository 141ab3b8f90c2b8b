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

Both sides of the copy go through directory descriptors (see ``_fill``): a
folder of the context swapped for a link after it was hashed can neither lead
the copy out of the context nor redirect a write out of the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import stat
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from orchestrator.catalog.beneath import FILE, FOLDER, Escapes, inside, open_beneath
from orchestrator.catalog.context import Context
from orchestrator.catalog.digests import forget
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.model import FileEntry, Layer

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


# O_NONBLOCK: a file swapped for a fifo must not block the open (it is then
# refused, not read). O_NOFOLLOW: a context file swapped for a symlink since it
# was listed fails to open (ELOOP), a changed context.
_READ = FILE
# O_EXCL (and O_NOFOLLOW, said twice): a name that exists, a link included,
# is never written through.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What a copied file or folder is, as the kernel says when opening it through
# its parent's descriptor: a link swapped in, or a name gone, is a change.
_CHANGED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _copy_hashed(src: str, dst: str, mode: int, *, src_dir: int | None = None,
                 dst_dir: int | None = None, follow: bool = False) -> str:
    """Copy and hash in one pass (the digest is of exactly the bytes written),
    then give the copy ``mode`` and the source's times. ``src_dir`` and
    ``dst_dir``: the folders (descriptors) the names are in. ``follow``: a
    Dockerfile outside the context, which may be a link. Raises NotRegular
    when ``src`` is no longer a regular file."""
    fd_in = os.open(src, _READ & ~os.O_NOFOLLOW if follow else _READ, dir_fd=src_dir)
    try:
        return _copy_open(fd_in, dst, mode, dst_dir)
    finally:
        os.close(fd_in)


def _copy_open(fd_in: int, dst: str, mode: int, dst_dir: int | None) -> str:
    """_copy_hashed from the open file ``fd_in``."""
    h = hashlib.sha256()
    info = os.fstat(fd_in)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegular(dst)
    fd_out = os.open(dst, _CREATE, 0o600, dir_fd=dst_dir)
    try:
        # Up to the size fstat saw, so a small file takes one read, not two
        # (the second to see the end). Bytes appended since are not copied,
        # and not hashed: the digest is of exactly what the copy holds.
        left = info.st_size
        while left > 0 and (chunk := os.read(fd_in, min(_CHUNK, left))):
            left -= len(chunk)
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd_out, view):]
        os.fchmod(fd_out, mode)
        # Keep the source's times: engines that do not clamp them copy them
        # into the image, and the snapshot must give what the folder would.
        os.utime(fd_out, ns=(info.st_atime_ns, info.st_mtime_ns))
    finally:
        os.close(fd_out)
    return h.hexdigest()


def _mkdir_fresh(path: str) -> None:
    """A build's private folder (0700: the copies inside keep their sources'
    modes, maybe group- or world-writable, and nobody else may reach them)."""
    try:
        os.mkdir(path, 0o700)
    except FileNotFoundError:  # the first build: the builds folder itself is missing
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)


IGNORE_NAME = "Dockerfile.dockerignore"


def new_folder(dest: Path, *, parents: bool = True) -> None:
    """An empty snapshot folder: ``dest/context/`` and, beside where the
    Dockerfile goes, the empty ignore file (see ``_fill``). ``parents``: make
    the folder it goes in when missing (never for the scratch folder, whose
    mode and owner are checked once: see own_private_folder)."""
    if parents:
        _mkdir_fresh(str(dest))
    else:
        os.mkdir(dest, 0o700)
    os.mkdir(os.path.join(dest, "context"))
    os.close(os.open(os.path.join(dest, IGNORE_NAME), _CREATE, 0o644))


def make_snapshot(layer: Layer, context: Context, dest: Path) -> tuple[Path, Path]:
    """Copy ``context`` (as hashed) to ``dest/context`` and the Dockerfile to
    ``dest/Dockerfile``; returns (context dir, Dockerfile path)."""
    new_folder(dest)
    root, dockerfile = _fill(layer, context, str(dest),
                             context.root or os.path.realpath(layer.context))
    return Path(root), Path(dockerfile)


# A folder being copied: its path in the context, the source's and the copy's
# descriptors, and the mode and mtime the copy gets once its contents are in.
_Open = tuple[str, int, int, int, int]


def _fill(layer: Layer, context: Context, dest: str, source: str) -> tuple[str, str]:
    """make_snapshot into a folder made by ``new_folder`` (or emptied since), from
    ``source``, the layer's context folder resolved.

    Both sides are walked through directory descriptors: every folder is
    opened relative to its parent's with O_NOFOLLOW | O_DIRECTORY and every
    file with O_NOFOLLOW, so a folder of the context swapped for a link since
    it was hashed is a change (ContextChanged), never a way out of it; and the
    copies are made relative to the copy's folders, each made here with
    O_EXCL semantics, so nothing in ``dest`` can redirect a write either.
    ``dest`` itself is this build's private folder (0700, in a folder only we
    may write: see own_private_folder)."""
    try:
        top = os.open(source, FOLDER)
    except OSError as exc:
        if exc.errno not in _CHANGED:
            raise
        raise ContextChanged(layer.id, "./") from None
    stack: list[_Open] = []
    try:
        info = os.fstat(top)
        if context.root_id is not None and (info.st_dev, info.st_ino) != context.root_id:
            raise ContextChanged(layer.id, "./")  # another folder at that path now
        root = os.path.join(dest, "context")
        # The context folder itself keeps its own mode too, not the daemon's umask
        # (UMask=0027 under systemd), as the engine would have seen it in place.
        stack.append(("", top, os.open(root, FOLDER), info.st_mode, info.st_mtime_ns))
        dockerfile = os.path.join(dest, "Dockerfile")
        linked = False
        for entry in context.files:
            rel = entry.path.rstrip("/")
            parent, _, name = rel.rpartition("/")
            here = _enter(layer, stack, parent)
            kind = stat.S_IFMT(entry.mode)
            if kind == stat.S_IFREG:
                copied = _copy_entry(layer, entry.path, name, here, entry.mode)
                if copied != entry.digest:
                    forget(os.path.join(source, rel))  # the scan's digest may be the cache's
                    raise ContextChanged(layer.id, entry.path)
                if not linked and copied == context.dockerfile \
                        and entry.mode & stat.S_IRUSR and not entry.mode & 0o7022:
                    linked = _link_dockerfile(name, here[2], dockerfile)
            elif kind == stat.S_IFDIR:
                _open_folder(layer, stack, here, name, rel, entry.mode)
            else:
                _copy_link(layer, entry, name, here)
        while len(stack) > 1:
            _close(stack)
        if not linked:
            _copy_dockerfile(layer, context, top, source, dockerfile)
        _close(stack)  # the context folder: its mode and times, last
        return root, dockerfile
    finally:
        for _, src_fd, dst_fd, _, _ in stack:
            os.close(dst_fd)
            os.close(src_fd)


def _enter(layer: Layer, stack: list[_Open], parent: str) -> _Open:
    """The open folder ``parent`` (a path in the context), closing the folders
    done on the way: entries are sorted, so a folder comes before what it
    holds, and once left it is done."""
    while len(stack) > 1 and not (parent == stack[-1][0]
                                  or parent.startswith(stack[-1][0] + "/")):
        _close(stack)
    # A folder the file set does not list (never so from read_context): made
    # with the source's mode.
    while stack[-1][0] != parent:
        here = stack[-1]
        name = parent[len(here[0]):].lstrip("/").split("/", 1)[0]
        rel = f"{here[0]}/{name}" if here[0] else name
        _open_folder(layer, stack, here, name, rel, None)
    return stack[-1]


def _open_folder(layer: Layer, stack: list[_Open], here: _Open, name: str, rel: str,
                 mode: int | None) -> None:
    try:
        src = os.open(name, FOLDER, dir_fd=here[1])
    except OSError as exc:
        if exc.errno not in _CHANGED:
            raise
        raise ContextChanged(layer.id, rel + "/") from None  # gone, or a link now
    try:
        info = os.fstat(src)
        # 0700 while it is filled (its own mode may forbid writing into it).
        os.mkdir(name, 0o700, dir_fd=here[2])
        dst = os.open(name, FOLDER, dir_fd=here[2])
    except BaseException:
        os.close(src)
        raise
    stack.append((rel, src, dst, info.st_mode if mode is None else mode, info.st_mtime_ns))


def _close(stack: list[_Open]) -> None:
    """The innermost open folder is done: its copy gets its mode and times
    (writing into it moved them) through its descriptor."""
    _, src, dst, mode, mtime_ns = stack.pop()
    try:
        os.fchmod(dst, stat.S_IMODE(mode))
        os.utime(dst, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(dst)
        os.close(src)


def _copy_entry(layer: Layer, path: str, name: str, here: _Open, mode: int) -> str:
    """A regular file of the context, copied and hashed (the open and its
    fstat check the type: a link or anything else there now is a change)."""
    try:
        return _copy_hashed(name, name, stat.S_IMODE(mode), src_dir=here[1], dst_dir=here[2])
    except NotRegular:
        raise ContextChanged(layer.id, path) from None
    except OSError as exc:
        if exc.errno not in _CHANGED:
            raise
        raise ContextChanged(layer.id, path) from None


def _copy_link(layer: Layer, entry: FileEntry, name: str, here: _Open) -> None:
    try:
        info = os.stat(name, dir_fd=here[1], follow_symlinks=False)
        if not stat.S_ISLNK(info.st_mode):
            raise ContextChanged(layer.id, entry.path)
        target = os.readlink(name, dir_fd=here[1])
    except OSError as exc:
        if exc.errno not in (*_CHANGED, errno.EINVAL):
            raise
        raise ContextChanged(layer.id, entry.path) from None
    if hashlib.sha256(target.encode()).hexdigest() != entry.digest:
        raise ContextChanged(layer.id, entry.path)
    os.symlink(target, name, dir_fd=here[2])
    os.utime(name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=here[2],
             follow_symlinks=False)


def _link_dockerfile(name: str, folder: int, dockerfile: str) -> bool:
    """The Dockerfile is usually in its context: the copy just verified holds
    exactly the bytes the key was made from, and a hard link to it costs one
    call where a copy costs ten. Only this build's private copies share the
    inode, which no one but the owner may write (else it is copied, as 0644);
    the engine only reads it. (Any context file with those bytes will do: the
    engine gets the keyed Dockerfile, even if the file itself was edited since
    the scan; the next run keys the edit.)"""
    try:
        os.link(name, dockerfile, src_dir_fd=folder, follow_symlinks=False)
    except OSError:
        return False  # no hard links here: copy it
    return True


def _copy_dockerfile(layer: Layer, context: Context, top: int, source: str,
                     dockerfile: str) -> None:
    """The Dockerfile copied on its own (ignored by its context, or none of its
    copies may be shared). One in the context is opened as the context's files
    are, never through a link out of it; one outside is the catalog's, as
    layer.toml names it."""
    rel = inside(str(layer.dockerfile), str(layer.context))
    try:
        if rel is None:
            copied = _copy_hashed(str(layer.dockerfile), dockerfile, 0o644, follow=True)
        else:
            fd = open_beneath(top, rel, _READ, source)
            try:
                copied = _copy_open(fd, dockerfile, 0o644, None)
            finally:
                os.close(fd)
    except (NotRegular, Escapes):
        raise ContextChanged(layer.id, layer.dockerfile.name) from None
    except OSError as exc:
        if exc.errno not in _CHANGED:
            raise
        raise ContextChanged(layer.id, layer.dockerfile.name) from None
    if copied != context.dockerfile:
        forget(str(layer.dockerfile))
        raise ContextChanged(layer.id, layer.dockerfile.name)
    # The copy is already filtered by the ignore file the key was made with. The
    # empty ignore file beside the Dockerfile (new_folder) is the first one both
    # engines look for, so neither applies the context's .dockerignore a second
    # time (when a Dockerfile.dockerignore chose the set, that would drop keyed
    # files).


def remove_tree(path: Path) -> None:
    """Remove a snapshot, whatever modes its copied directories carry, never
    following a link out of it: a link is removed, not entered (shutil.rmtree
    works through descriptors here; so does the second pass)."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass  # a directory copied without write permission (or ``path`` is a link)
    parent, name = os.path.split(os.fspath(path))
    try:
        folder = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _remove_at(folder, name, strict=False)
    finally:
        os.close(folder)


def _remove_at(folder: int, name: str, *, strict: bool) -> None:
    """Remove ``name`` from the folder open as ``folder``, and everything below
    it: each folder opened with O_NOFOLLOW (a link there is unlinked, never
    entered) and opened up through its descriptor when its mode keeps us out.
    ``strict``: raise the first error; else remove what can be."""
    try:
        _unlink_at(folder, name)
        return
    except IsADirectoryError:
        pass
    except OSError:
        if strict:
            raise
        return
    try:
        inner = os.open(name, FOLDER, dir_fd=folder)
    except OSError:
        if strict:
            raise
        return
    try:
        if os.fstat(inner).st_mode & stat.S_IRWXU != stat.S_IRWXU:
            os.fchmod(inner, 0o700)  # a copy of a read-only folder
        with os.scandir(inner) as listing:
            names = [entry.name for entry in listing]  # listed whole before removing
        for child in names:
            _remove_at(inner, child, strict=strict)
    except OSError:
        if strict:
            raise
    finally:
        os.close(inner)
    try:
        os.rmdir(name, dir_fd=folder)
    except OSError:
        if strict:
            raise


def _unlink_at(folder: int, name: str) -> None:
    """unlink ``name`` (a file or link; IsADirectoryError for a folder), opening
    up the folder it is in when its mode forbids removing (without root's
    override of file modes)."""
    try:
        os.unlink(name, dir_fd=folder)
    except PermissionError:
        os.fchmod(folder, 0o700)
        os.unlink(name, dir_fd=folder)


def _remove_entry(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        remove_tree(Path(entry.path))
    else:
        os.unlink(entry.path)


def _kept(entry: os.DirEntry[str]) -> bool:
    """What an emptied folder keeps: the context folder and the empty ignore file."""
    if entry.name == "context":
        return entry.is_dir(follow_symlinks=False)
    return entry.name == IGNORE_NAME and entry.is_file(follow_symlinks=False) \
        and entry.stat(follow_symlinks=False).st_size == 0


def _empty(dest: str, names: Iterable[str] | None) -> bool:
    """Empty a used snapshot folder back to what ``new_folder`` makes: what was
    copied into ``context/`` goes (``names``: the copy's top-level names), and
    everything beside it (the Dockerfile, secrets, the engine's scratch files)
    except the empty ignore file. False when the folder is not in that shape
    afterwards (it is then removed, not reused): what one build leaves must
    never reach the next. The names are known, so the context folder is not
    listed: anything else in it keeps it from being removed, and so from reuse."""
    if names is None:
        return False
    root = os.path.join(dest, "context")
    try:
        folder = os.open(root, FOLDER)  # never through a link
    except OSError:
        return False
    try:
        for name in names:
            # Gone already: the rmdir below says whether anything is left.
            with contextlib.suppress(FileNotFoundError):
                _remove_at(folder, name, strict=True)
    except OSError:
        return False
    finally:
        os.close(folder)
    try:  # refused when anything is left: what could not be removed, a newcomer
        os.rmdir(root)
    except OSError:
        return False
    os.mkdir(root)  # as new_folder makes it
    with os.scandir(dest) as listing:
        beside = list(listing)
    kept = 0
    for entry in beside:
        if _kept(entry):
            kept += 1
        else:
            _remove_entry(entry)
    return kept == 2


def _top_names(context: Context) -> set[str]:
    """The names a snapshot of ``context`` makes directly in its context folder."""
    return {entry.path.split("/", 1)[0] for entry in context.files}


# A context up to this size is copied to the scratch folder (a tmpfs), not the
# state dir's disk: see Snapshots.
SMALL_CONTEXT = 1 << 20


def scratch_path(setting: str, state_dir: Path) -> Path | None:
    """The folder small snapshots go to for this state dir under ``[state]
    scratch`` ("auto": in /dev/shm when it is a tmpfs; "none": no such folder,
    everything in ``<state>/builds``). Named after the user and the state dir,
    so crash recovery finds what a killed run left there."""
    if setting == "none":
        return None
    base = setting
    if setting == "auto":
        base = "/dev/shm"
        if not _is_tmpfs(base):
            return None
    tag = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    return Path(base, f"orchestrator-{os.geteuid()}-{tag}")


def _is_tmpfs(mountpoint: str) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            return any(fields[1:3] == [mountpoint, "tmpfs"]
                       for fields in (line.split() for line in mounts))
    except OSError:
        return False


def own_private_folder(path: Path) -> bool:
    """Make ``path`` (0700), or take it if it already is ours: in a world-writable
    place like /dev/shm, a folder someone else made (or a link) is never used."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        info = os.lstat(path)
        base = os.stat(os.path.dirname(path))
    except OSError:
        return False
    # Where others may write, only the sticky bit (as on /dev/shm) keeps them
    # from swapping our folder for a link after this check.
    shared_unsafely = base.st_mode & 0o022 and not base.st_mode & stat.S_ISVTX
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() \
        and not info.st_mode & 0o077 and not shared_unsafely


class Snapshots:
    """Each build's snapshot, made before the engine starts and removed when it is
    done. In the daemon both happen on a worker thread: copying and hashing a
    large context, or deleting one, can take long enough to stall the event loop
    (the API, the systemd watchdog, every other build). ``inline`` does them on
    the loop, for a one-shot run where nothing else waits on it: a thread hop per
    build costs more there than it saves, as with the state store.

    A finished build's folder is emptied and kept for the next build of the run,
    renamed to that build's own path: on ext4 making and removing the two
    directories of a snapshot cost more than copying a small context (0.66 s
    against 0.17 s for 2,000 snapshots here; benchmarks/bench_plan_scale.py).
    Every build still gets a path of its own, never used before, so no engine
    cache keyed by the context's path can hand one build another's files.
    ``close`` removes the kept folders when the run ends.

    ``scratch`` gives the folder (see scratch_path) where snapshots of contexts
    up to SMALL_CONTEXT go instead: on a tmpfs they cost no disk I/O, and on a
    build host the disk is busy with the engines' layers. On this host's ext4
    the time of 2,000 small snapshots varied 0.45-2 s with the disk's load,
    against a steady 0.32-0.40 s on tmpfs. Larger contexts stay on disk, so a build's
    snapshot never holds more than 1 MiB of memory (what else a build writes
    that can be large, the SBOM's copy of the image layers, goes to disk); a
    full tmpfs sends the snapshot to disk too."""

    def __init__(self, *, inline: bool,
                 scratch: Callable[[], Path | None] | None = None) -> None:
        self.inline = inline
        self._scratch = scratch  # asked once, when the first small snapshot is made
        self._scratch_folder: Path | None = None
        self._scratch_asked = False
        # The path a build asked for -> its folder, and what it copied there.
        self._placed: dict[Path, tuple[str, Context]] = {}
        self._free: list[str] = []  # emptied folders, ready to be renamed
        self._lock = threading.Lock()  # the daemon's worker threads share the list
        self._tag = uuid.uuid4().hex[:8]
        # Names unique to this run's kept folders (a rename onto an empty folder
        # of another run's would replace it).
        self._names = itertools.count()
        self._closed = False

    def _folder_for(self, context: Context, dest: Path) -> str:
        """``dest``, or its name in the scratch folder for a small context."""
        if self._scratch is None or context.size > SMALL_CONTEXT or self._closed:
            return str(dest)
        with self._lock:
            if not self._scratch_asked:
                self._scratch_asked = True
                folder = self._scratch()
                if folder is not None and own_private_folder(folder):
                    self._scratch_folder = folder
        if self._scratch_folder is None:
            return str(dest)
        return os.path.join(self._scratch_folder, os.path.basename(dest))

    def _make(self, layer: Layer, context: Context, dest: Path) -> tuple[Path, Path]:
        """A snapshot for ``dest``: in the scratch folder for a small context,
        else there; nothing left behind when it fails (the layer's next attempt
        makes its snapshot in the same place)."""
        folder = self._folder_for(context, dest)
        if folder != str(dest):
            try:
                return self._make_in(layer, context, dest, folder, scratch=True)
            except OSError as exc:
                # A full tmpfs, or its folder gone: this snapshot goes to disk.
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.ENOENT):
                    raise
        return self._make_in(layer, context, dest, str(dest), scratch=False)

    def _make_in(self, layer: Layer, context: Context, dest: Path, folder: str, *,
                 scratch: bool) -> tuple[Path, Path]:
        parent = os.path.dirname(folder)
        with self._lock:
            self._placed[dest] = (folder, context)
            slot = next((f for f in self._free if os.path.dirname(f) == parent), None)
            if slot is not None:
                self._free.remove(slot)
        try:
            if slot is None:
                new_folder(Path(folder), parents=not scratch)
            else:
                os.rename(slot, folder)
            # From where the scan read it: a layers folder repointed since (an
            # atomic deploy) is found by the layer's next read, not mixed in.
            _fill(layer, context, folder, context.root or os.path.realpath(layer.context))
            base = Path(folder)  # parsed once; the two children below are not
            return base / "context", base / "Dockerfile"
        except BaseException:
            remove_tree(Path(folder))
            if slot is not None:
                remove_tree(Path(slot))  # when the rename itself failed
            with self._lock:
                self._placed.pop(dest, None)
            raise

    def _release(self, dest: Path) -> None:
        """Empty a build's folder and keep it for the next build; remove it when it
        cannot be emptied to a known shape, or once the run is over."""
        with self._lock:
            folder, context = self._placed.pop(dest, (str(dest), None))
        try:
            if not self._closed and _empty(folder, None if context is None
                                           else _top_names(context)):
                with self._lock:
                    name = f"free-{self._tag}-{next(self._names)}"
                slot = os.path.join(os.path.dirname(folder), name)
                os.rename(folder, slot)
                with self._lock:
                    if not self._closed:
                        self._free.append(slot)
                        return
                remove_tree(Path(slot))
                return
        except OSError:
            pass
        remove_tree(Path(folder))

    def close(self) -> None:
        """Remove the kept folders (and the scratch folder, once empty); a build
        still finishing removes its own."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for slot in free:
            remove_tree(Path(slot))
        if self._scratch_folder is not None:
            with contextlib.suppress(OSError):  # not empty: a build still finishing
                os.rmdir(self._scratch_folder)

    @contextlib.asynccontextmanager
    async def snapshot(self, layer: Layer, context: Context,
                       dest: Path) -> AsyncIterator[tuple[Path, Path]]:
        """A snapshot for one build; raises ContextChanged (leaving nothing) when
        a file no longer has the content its key was made from."""
        if self.inline:
            paths = self._make(layer, context, dest)
        else:
            loop = asyncio.get_running_loop()
            making = loop.run_in_executor(None, self._make, layer, context, dest)
            try:
                paths = await asyncio.shield(making)
            except asyncio.CancelledError:
                # The copy goes on in its thread; what it made goes once it ends.
                making.add_done_callback(
                    lambda _: loop.run_in_executor(None, self._release, dest))
                raise
        try:
            yield paths
        finally:
            if self.inline:
                self._release(dest)
            else:
                # Shielded: a second cancel must not leave half a tree behind.
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(
                    None, self._release, dest))
