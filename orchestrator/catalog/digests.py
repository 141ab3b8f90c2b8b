"""sha256 of files, remembered by their stat.

The daemon rescans contexts on every run and status view, and a one-shot run
reads every Dockerfile once to load the catalog and again to key it: a file
whose stat is unchanged since its bytes were hashed is not read again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from orchestrator.catalog.beneath import FILE
from orchestrator.catalog.tomlfile import open_regular

_CHUNK = 1 << 20

# path -> (device, inode, size, mtime ns, ctime ns, sha256). ctime is in the
# stamp because an mtime can be put back (cp -p, rsync -t, tar x, touch -r)
# but a ctime cannot: a write or chmod sets it to now. What no stamp can see
# is a same-size rewrite within one tick of the file system's clock (coarse
# on kernels before 6.13): the snapshot hashes every file again, and where
# its copy disagrees it forgets the digest (``forget``), so the layer is
# planned again from the file's bytes, never built under the old key.
_DIGESTS: dict[str, tuple[int, int, int, int, int, str]] = {}
_DIGESTS_MAX = 200_000


def _stamp(info: os.stat_result) -> tuple[int, int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _keep(path: str, info: os.stat_result, digest: str) -> None:
    if len(_DIGESTS) >= _DIGESTS_MAX:
        _DIGESTS.clear()  # crude, but bounded; a full rescan costs one read per file
    _DIGESTS[path] = (*_stamp(info), digest)


def file_digest(path: Path) -> str:
    """sha256 of a regular file's content (following a symlink, for a Dockerfile).
    Anything else — a fifo, which would block the reader for good, a device that
    never ends — is an InputError naming the file."""
    return digest_of(str(path), path.stat())


def digest_of(path: str, info: os.stat_result) -> str:
    """file_digest of ``path``, whose stat is ``info`` (the catalog's own files,
    named by layer.toml: a context's files are read with digest_at)."""
    cached = _DIGESTS.get(path)
    if cached is not None and cached[:5] == _stamp(info):
        return cached[5]
    fd = open_regular(path)
    try:
        digest = _read_digest(fd)
        # The file may have changed while we read it: only a stat that held still
        # around the read may vouch for the digest next time.
        if _stamp(os.fstat(fd)) == _stamp(info):
            _keep(path, info, digest)
    finally:
        os.close(fd)
    return digest


def digest_at(folder: int, name: str, path: str,
              info: os.stat_result) -> tuple[str, os.stat_result] | None:
    """The digest of the regular file ``name`` in the folder whose descriptor is
    ``folder`` (``path`` names it in the cache; ``info`` is its lstat), opened
    without following a link, and the stat of the file it was read from: an
    editor's atomic save may have put another file there since the lstat.
    None when what is there now is no regular file (a link, a fifo): it
    changed while it was looked at."""
    cached = _DIGESTS.get(path)
    if cached is not None and cached[:5] == _stamp(info):
        return cached[5], info
    try:
        fd = os.open(name, FILE, dir_fd=folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link since the lstat
            return None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return None
        return digest_of_open(fd, path, opened), opened
    finally:
        os.close(fd)


def digest_of_open(fd: int, path: str, opened: os.stat_result) -> str:
    """The digest of the regular file open as ``fd`` (``opened``: its fstat),
    from the cache when its stamp is unchanged."""
    cached = _DIGESTS.get(path)
    if cached is not None and cached[:5] == _stamp(opened):
        return cached[5]
    digest = _read_digest(fd)
    if _stamp(os.fstat(fd)) == _stamp(opened):
        _keep(path, opened, digest)
    return digest


def _read_digest(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, _CHUNK):
        h.update(chunk)
    return h.hexdigest()


def remember(path: str, before: os.stat_result, after: os.stat_result, data: bytes) -> None:
    """``data`` was read whole from ``path`` (its descriptor's stat ``before``
    and ``after`` the read): its digest needs no second read, if nothing moved."""
    if _stamp(before) == _stamp(after):
        _keep(path, before, hashlib.sha256(data).hexdigest())


def forget(path: str) -> None:
    """The digest of ``path`` is not to be trusted (a copy of the file hashed
    otherwise, as a same-size rewrite within one clock tick gives): the next
    read hashes the file."""
    _DIGESTS.pop(path, None)
