"""Chosen files of an image's final filesystem, read from its layer blobs without unpacking.

The layers are tar streams (gzip, zstd or plain), oldest first. Each is read
once, in order; only the bodies of files whose path is selected are kept, the
rest is skipped. OCI whiteouts apply between layers: ``DIR/.wh.NAME`` deletes
NAME (and what is under it) from the layers below, ``DIR/.wh..wh..opq`` hides
everything below that was in DIR. Entries of the same layer are untouched by
its own whiteouts — the spec's rule, which is why a layer's changes are
gathered first and applied to the lower state when the layer ends.

Memory stays bounded by what is selected: the per-layer bookkeeping only
tracks paths that touch a selected file, a selected file larger than
``max_file_size`` is an error rather than a partial read, and so is a
selection larger than ``max_total_size`` altogether.

No network: another layer fetches the blobs and hands over file objects (an
iterable, so it may open each lazily). Reading is blocking; async callers run
``select_files`` in a thread.
"""

from __future__ import annotations

import importlib
import io
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from orchestrator.core.errors import OrchestratorError

MAX_FILE_SIZE = 64 * 1024 * 1024
MAX_TOTAL_SIZE = 256 * 1024 * 1024

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

Pattern = str | Callable[[str], bool]


class ImageFsError(OrchestratorError):
    """A layer that cannot be read, or a selection over the size limits."""


@dataclass(frozen=True)
class SelectedFile:
    """One selected path as the final filesystem has it.

    ``data`` is the body of a regular file, or of a hard link whose target was
    read too. It is None for symlinks, for hard links to unread files and for
    paths selected by presence only: the path exists, its body was not kept.
    """

    path: str  # relative, no leading "/": "var/lib/dpkg/status"
    kind: Literal["file", "symlink", "hardlink"]
    data: bytes | None
    size: int
    mode: int
    layer: int  # index of the layer that last wrote it
    link_target: str | None = None


def select_files(layers: Iterable[IO[bytes]], patterns: Sequence[Pattern], *,
                 presence: Sequence[Pattern] = (),
                 max_file_size: int = MAX_FILE_SIZE,
                 max_total_size: int = MAX_TOTAL_SIZE,
                 lower: Mapping[str, SelectedFile] | None = None,
                 on_layer: Callable[[int, Mapping[str, SelectedFile]], None] | None = None,
                 ) -> dict[str, SelectedFile]:
    """The selected paths of the image built from ``layers`` (oldest first), by path.

    Files matching ``patterns`` are read; those matching only ``presence`` are
    recorded without their bodies (an interpreter binary's path says enough).
    Patterns are globs over relative paths (``*`` within one path segment,
    ``**/`` any number of directories) or predicates on the path.

    ``lower``: the selection of layers below ``layers`` (read earlier, bodies
    optional), which these layers' whiteouts and files then change: a child
    image's read can start from its parent's. ``on_layer(index, state)`` is
    called after each layer is applied (the state must not be kept: it changes)."""
    wanted = compile_patterns(patterns)
    noted = compile_patterns(presence)
    state: dict[str, SelectedFile] = dict(lower or {})
    for index, blob in enumerate(layers):
        changes = _LayerChanges(state)
        kept = sum(len(f.data or b"") for f in state.values())
        try:
            with tarfile.open(fileobj=_open_layer(blob, index), mode="r|*") as tar:
                for member in _members(tar):
                    path = _normal(member.name)
                    if path is None:
                        continue
                    if changes.see(member, path):
                        continue  # a whiteout: a marker, not a file of the image
                    if not (member.isfile() or member.issym() or member.islnk()):
                        continue
                    if wanted(path):
                        found = _read(tar, member, path, index, max_file_size=max_file_size,
                                      added=changes.added, lower=state)
                    elif noted(path):
                        found = _note(member, path, index)
                    else:
                        continue
                    kept += len(found.data or b"") - len(_data(changes.added.get(path)))
                    changes.added[path] = found
                    if kept > max_total_size:
                        raise ImageFsError(f"layer {index}: selected files exceed "
                                           f"{max_total_size} bytes (at {path})")
            # The tar ends before the blob does (zero blocks, gzip trailer): read to the
            # end so a reader that checks the blob's digest as it goes sees every byte.
            while blob.read(1 << 16):
                pass
        except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
            raise ImageFsError(f"layer {index}: not a readable tar stream: {exc}") from exc
        changes.apply()
        if on_layer is not None:
            on_layer(index, state)
    return dict(sorted(state.items()))


def contents(files: Mapping[str, SelectedFile]) -> dict[str, bytes | None]:
    """Path -> body (None where only existence is known), as ``core.sbom`` takes it."""
    return {path: f.data for path, f in files.items()}


def compile_patterns(patterns: Sequence[Pattern]) -> Callable[[str], bool]:
    """One predicate for all patterns: the globs as one regex, then the callables."""
    globs = [p for p in patterns if isinstance(p, str)]
    predicates = [p for p in patterns if not isinstance(p, str)]
    regex = re.compile("|".join(f"(?:{glob_regex(g)})" for g in globs)) if globs else None

    def matches(path: str) -> bool:
        if regex is not None and regex.fullmatch(path):
            return True
        return any(predicate(path) for predicate in predicates)

    return matches


def glob_regex(pattern: str) -> str:
    """Regex source for a path glob: ``*``/``?``/``[…]`` stay within a segment,
    a ``**`` segment spans zero or more directories."""
    segments = pattern.strip("/").split("/")
    out: list[str] = []
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_segment_regex(segment) + ("" if last else "/"))
    return "".join(out)


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := segment.find("]", i + 2)) != -1:
            body = segment[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^/" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


# --- one layer ---------------------------------------------------------------------------


class _LayerChanges:
    """What one layer does to the selected files below it, applied when it ends.

    Only paths that touch the lower selection are remembered, so a layer of
    100,000 files costs no more memory than one of ten.
    """

    def __init__(self, lower: dict[str, SelectedFile]) -> None:
        self.lower = lower
        # Every directory that holds a lower selected file: "a", "a/b" for "a/b/c".
        self.lower_dirs = {parent for path in lower for parent in _parents(path)}
        self.added: dict[str, SelectedFile] = {}
        self.gone: set[str] = set()  # path and everything under it hidden
        self.emptied: set[str] = set()  # opaque dirs: everything under it hidden
        self.replaced: set[str] = set()  # a lower file replaced by a directory

    def see(self, member: tarfile.TarInfo, path: str) -> bool:
        """Note what ``member`` hides below; True if it is a whiteout marker."""
        parent, _, base = path.rpartition("/")
        if base == _OPAQUE:
            if parent in self.lower_dirs or not parent:
                self.emptied.add(parent)
            return True
        if base.startswith(_WHITEOUT + _WHITEOUT):
            return True  # other ".wh..wh." names are AUFS bookkeeping, not deletions
        if base.startswith(_WHITEOUT):
            target = posixpath.join(parent, base[len(_WHITEOUT):])
            if target in self.lower or target in self.lower_dirs:
                self.gone.add(target)
            return True
        if member.isdir():
            if path in self.lower:
                self.replaced.add(path)
        elif path in self.lower or path in self.lower_dirs:
            # A file, link or device over a lower file — or over a lower
            # directory, which takes the directory's contents with it.
            self.gone.add(path)
        return False

    def apply(self) -> None:
        lower = self.lower
        if self.gone or self.emptied:
            for path in list(lower):
                if any(path == g or path.startswith(g + "/") for g in self.gone) or \
                        any(not d or path.startswith(d + "/") for d in self.emptied):
                    del lower[path]
        for path in self.replaced:
            lower.pop(path, None)
        lower.update(self.added)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, layer: int, *,
          max_file_size: int, added: Mapping[str, SelectedFile],
          lower: Mapping[str, SelectedFile]) -> SelectedFile:
    if member.issym():
        return SelectedFile(path, "symlink", None, 0, member.mode, layer, member.linkname)
    if member.islnk():
        target = _normal(member.linkname) or ""
        # A tar hard link names an earlier member; its body was kept if it is selected too.
        source = added.get(target) or lower.get(target)
        data = source.data if source is not None else None
        return SelectedFile(path, "hardlink", data, len(data or b""), member.mode, layer,
                            target)
    if member.size > max_file_size:
        raise ImageFsError(f"layer {layer}: {path} is {member.size} bytes, over the "
                           f"{max_file_size}-byte limit for a selected file")
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        raise ImageFsError(f"layer {layer}: {path} is truncated "
                           f"({len(data)} of {member.size} bytes)")
    return SelectedFile(path, "file", data, member.size, member.mode, layer)


def _note(member: tarfile.TarInfo, path: str, layer: int) -> SelectedFile:
    if member.issym():
        return SelectedFile(path, "symlink", None, 0, member.mode, layer, member.linkname)
    if member.islnk():
        return SelectedFile(path, "hardlink", None, 0, member.mode, layer,
                            _normal(member.linkname))
    return SelectedFile(path, "file", None, member.size, member.mode, layer)


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members one at a time. TarFile keeps every member it has seen in
    ``members``; a stream is read once, so that list is only memory: drop it."""
    seen: Any = tar  # typeshed does not declare the (public) members attribute
    while (member := tar.next()) is not None:
        seen.members.clear()
        yield member


def _data(found: SelectedFile | None) -> bytes:
    return (found.data or b"") if found is not None else b""


def _parents(path: str) -> Iterator[str]:
    parent = path.rpartition("/")[0]
    while parent:
        yield parent
        parent = parent.rpartition("/")[0]


def _normal(name: str) -> str | None:
    """A tar member name as a relative path: no "./", no leading or trailing "/".
    None for the root itself and for names that climb out of it."""
    if ".." in name.split("/"):
        return None
    path = posixpath.normpath("/" + name).lstrip("/")
    return path or None


# --- decompression -----------------------------------------------------------------------


class _Rewound(io.RawIOBase):
    """A non-seekable stream with the bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(view), len(self._head))
            view[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        chunk = self._rest.read(len(view))
        view[:len(chunk)] = chunk
        return len(chunk)


def _open_layer(blob: IO[bytes], layer: int) -> IO[bytes]:
    """The uncompressed tar stream of a layer, whatever its compression (by magic bytes:
    media types lie more often than headers do)."""
    head = b""
    while len(head) < 4 and (more := blob.read(4 - len(head))):  # a socket may return less
        head += more
    stream: IO[bytes] = io.BufferedReader(_Rewound(head, blob), buffer_size=1 << 16)
    if head.startswith(_ZSTD_MAGIC):
        return _zstd_reader(stream, layer)
    return stream  # gzip and plain tar: tarfile's "r|*" tells them apart


def _zstd_reader(stream: IO[bytes], layer: int) -> IO[bytes]:
    # Python 3.14's compression.zstd, else the zstandard package if installed;
    # imported by name so neither is a dependency.
    try:
        module: Any = importlib.import_module("compression.zstd")
        return module.ZstdFile(stream)  # type: ignore[no-any-return]
    except ImportError:
        pass
    try:
        module = importlib.import_module("zstandard")
    except ImportError as exc:
        raise ImageFsError(f"layer {layer} is zstd-compressed; reading it needs Python "
                           "3.14 or the 'zstandard' package") from exc
    # zstd:chunked layers (containers/storage) are many frames: read across them.
    return module.ZstdDecompressor().stream_reader(  # type: ignore[no-any-return]
        stream, read_across_frames=True)
