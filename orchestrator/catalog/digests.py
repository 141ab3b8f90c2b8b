"""sha256 of files, remembered by their stat.

The daemon rescans contexts on every run and status view, and a one-shot run
reads every Dockerfile once to load the catalog and again to key it: a file
whose stat is unchanged since its bytes were hashed is not read again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
    """file_digest of ``path``, whose stat (or lstat, for a regular file) is ``info``."""
    cached = _DIGESTS.get(path)
    if cached is not None and cached[:5] == _stamp(info):
        return cached[5]
    h = hashlib.sha256()
    fd = open_regular(path)
    try:
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    digest = h.hexdigest()
    # The file may have changed while we read it: only a stat that held still
    # around the read may vouch for the digest next time.
    if _stamp(os.stat(path)) == _stamp(info):
        _keep(path, info, digest)
    return digest


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
