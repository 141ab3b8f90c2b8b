"""Polling the package indexes the images use, cheaply: most polls are one conditional GET.

A Debian suite: ``InRelease`` (``Release`` where there is none) with
``If-None-Match``/``If-Modified-Since``; a 304 ends the poll. A new Release is
parsed, and a ``Packages`` file is fetched only when the Release lists another
SHA256 for it than the one last read (or when more package names are wanted
than it was read for): under ``by-hash/SHA256/<hex>`` when the Release offers
that (a mirror mid-update cannot hand out a mismatched file), the plain path
when by-hash answers 404. The file is streamed to disk with its size bounded by
what the Release says, checked against the Release's SHA256, then decompressed
(xz, gzip) and parsed as a stream keeping only the packages asked for.

An Alpine repository: ``<url>/<arch>/APKINDEX.tar.gz``, conditionally.

Signatures are not verified: InRelease's is stripped, APKINDEX's ignored. The
orchestrator only learns from the index that a newer version exists; the build
installs it with apt or apk, which verify it against the image's own keys
(``signed-by``, ``trusted=yes`` are recorded in the sources, not acted on here).
A forged index can at worst trigger a rebuild, whose result the key and the
``fix_not_applied`` check describe truthfully.

A source that cannot be reached, hangs or answers garbage is an
:class:`IndexFailure` for that source only; :class:`IndexPoller` retries it with
the upstream pollers' backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import random
import tarfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from orchestrator.core.pkgindex import (
    IndexEntry,
    IndexFile,
    IndexFormatError,
    IndexSnapshot,
    parse_apkindex,
    parse_packages,
    parse_release,
)
from orchestrator.core.pkgsources import ApkRepository, AptSuite, IndexSource
from orchestrator.core.redact import redact_text
from orchestrator.registry.upstream import Backoff, jittered

MAX_RELEASE_BYTES = 16 << 20
MAX_INDEX_BYTES = 256 << 20  # one compressed Packages file or APKINDEX.tar.gz
MAX_UNPACKED_BYTES = 2 << 30  # what one may decompress to
MAX_LINE_BYTES = 1 << 20
POLL_TIMEOUT_S = 600.0  # a whole poll, downloads included


class IndexFetchError(Exception):
    """One source's poll failed; the message says how."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class IndexState:
    """What one source's last polls learnt: the validators for the next conditional
    request and the entries of the packages wanted. JSON for the state store."""

    source: str
    url: str | None = None  # the Release/InRelease that answered last
    validators: dict[str, list[str | None]] = field(default_factory=dict)  # url -> etag, l-m
    digest: str | None = None  # "sha256:…" of the last Release (or APKINDEX.tar.gz)
    date: str | None = None  # the Release's Date
    suite: str | None = None  # as the index names itself ("bookworm-security")
    security: bool = False
    files: dict[str, str] = field(default_factory=dict)  # index file -> sha256 read
    wanted: list[str] = field(default_factory=list)
    entries: dict[str, list[list[str | None]]] = field(default_factory=dict)  # per file
    checked_at: float | None = None
    changed_at: float | None = None
    # The Release's NotAutomatic/ButAutomaticUpgrades (backports, experimental).
    not_automatic: bool = False
    but_automatic_upgrades: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexState:
        data = json.loads(text)
        state = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        if "not_automatic" not in data and state.source.startswith("apt "):
            # Kept before the Release's flags were: the next poll asks for the Release
            # unconditionally (one small request), or a backports suite would pass for
            # an ordinary one until its Release changed.
            state.validators = {}
        return state

    def snapshot(self) -> IndexSnapshot | None:
        if self.digest is None or self.url is None:
            return None
        by_name: dict[str, list[IndexEntry]] = {}
        for rows in self.entries.values():
            for name, version, arch, source, sha256 in rows:
                assert name is not None and version is not None
                by_name.setdefault(name, []).append(IndexEntry(name, version, arch, source,
                                                               sha256))
        return IndexSnapshot(self.source, self.suite or "", self.security, self.date,
                             self.digest, self.url,
                             {name: tuple(found) for name, found in sorted(by_name.items())},
                             self.changed_at or 0.0, self.not_automatic,
                             self.but_automatic_upgrades)


@dataclass(frozen=True)
class IndexUnchanged:
    source: str
    snapshot: IndexSnapshot | None


@dataclass(frozen=True)
class IndexFailure:
    source: str
    message: str
    retry_after_s: float | None = None


PollResult = IndexSnapshot | IndexUnchanged | IndexFailure


class IndexWatch:
    """Polls sources; keeps each one's state (load and save them with ``states``)."""

    def __init__(self, work_dir: Path, *, timeout_s: float = 30.0,
                 poll_timeout_s: float = POLL_TIMEOUT_S,
                 states: Mapping[str, IndexState] | None = None,
                 max_index_bytes: int = MAX_INDEX_BYTES) -> None:
        self.work_dir = work_dir
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s,
                                             sock_connect=timeout_s, sock_read=timeout_s)
        self.poll_timeout_s = poll_timeout_s
        self.max_index_bytes = max_index_bytes
        self.states: dict[str, IndexState] = dict(states or {})
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> IndexWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def poll(self, source: IndexSource, wanted: Collection[str],
                   arches: Collection[str] = ()) -> PollResult:
        """One poll. ``wanted``: package names whose entries to keep; ``arches``: the
        images' architectures (dpkg's "amd64", apk's "x86_64") where the source
        names none."""
        old = self.states.get(source.id)
        state = IndexState(**asdict(old)) if old is not None else IndexState(source.id)
        try:
            async with asyncio.timeout(self.poll_timeout_s):
                if isinstance(source, AptSuite):
                    changed = await self._poll_apt(source, state, set(wanted),
                                                   source.architectures or tuple(arches))
                else:
                    changed = await self._poll_apk(source, state, set(wanted),
                                                   source.architectures or tuple(arches))
        except IndexFetchError as exc:
            return IndexFailure(source.id, str(exc), exc.retry_after_s)
        except IndexFormatError as exc:
            return IndexFailure(source.id, f"garbage from the index: {exc}")
        except TimeoutError:
            return IndexFailure(source.id, "timed out")
        except (aiohttp.ClientError, OSError) as exc:
            return IndexFailure(source.id, f"{type(exc).__name__}: {exc}".rstrip(": "))
        state.checked_at = time.time()
        if changed:
            state.changed_at = state.checked_at
        self.states[source.id] = state
        snapshot = state.snapshot()
        if changed and snapshot is not None:
            return snapshot
        return IndexUnchanged(source.id, snapshot)

    # -- Debian -----------------------------------------------------------------

    async def _poll_apt(self, source: AptSuite, state: IndexState, wanted: set[str],
                        arches: tuple[str, ...]) -> bool:
        if not source.pollable:
            raise IndexFetchError(f"{source.uri}: only http(s) repositories are watched")
        if not arches:
            raise IndexFetchError("no architecture to read the index for")
        base = _suite_url(source)
        # The one that answered last first; the other when it is gone (a repository
        # republished without InRelease, or newly signed inline).
        candidates = list(dict.fromkeys([*filter(None, [state.url]), base + "InRelease",
                                         base + "Release"]))
        # More package names wanted than were kept: the Packages files must be read
        # again, so the Release is asked for unconditionally.
        conditional = not self._more_wanted(state, wanted)
        body = b""
        for url in candidates:
            assert url is not None
            validators = state.validators.get(url) if conditional else None
            status, headers, body = await self._get_small(url, validators)
            if status == 304:
                _check_not_modified(url, validators)
                return False
            if status == 404 and url != candidates[-1]:
                continue
            _check_status(url, status, headers)
            state.url = url
            state.validators = {url: [headers.get("ETag"), headers.get("Last-Modified")]}
            break
        return await self._read_release(source, state, body, wanted, arches)

    def _more_wanted(self, state: IndexState, wanted: set[str]) -> bool:
        return not wanted <= set(state.wanted)

    async def _read_release(self, source: AptSuite, state: IndexState, body: bytes,
                            wanted: set[str], arches: tuple[str, ...]) -> bool:
        release = await asyncio.to_thread(parse_release,
                                          body.decode("utf-8", errors="replace"))
        state.digest = "sha256:" + hashlib.sha256(body).hexdigest()
        state.date = release.date
        state.suite = release.codename or release.suite or source.suite
        state.security = release.security or source.security
        # Whether apt installs from the suite by itself changes what counts as a fix,
        # even when no Packages file changed.
        flags = (release.not_automatic, release.but_automatic_upgrades)
        changed = flags != (state.not_automatic, state.but_automatic_upgrades)
        state.not_automatic, state.but_automatic_upgrades = flags
        more = self._more_wanted(state, wanted)
        # Names asked about only grow: a name no layer installs any more costs nothing.
        keep = wanted | set(state.wanted)
        files: list[IndexFile] = []
        for component in source.components or ("",):
            for arch in arches:
                found = release.packages_file(component, arch)
                if found is not None:
                    files.append(found)
        if not files:
            raise IndexFetchError(f"{state.url} lists no Packages file for "
                              f"{', '.join(source.components or ('(flat)',))} on "
                              f"{', '.join(arches)}")
        for index_file in files:
            key = index_file.path.rsplit("/", 1)[0] if "/" in index_file.path else "."
            if state.files.get(key) == index_file.sha256 and not more:
                continue
            url = urllib.parse.urljoin(_suite_url(source), index_file.path)
            by_hash = None
            if release.by_hash:
                folder = index_file.path.rsplit("/", 1)[0] + "/" if "/" in index_file.path \
                    else ""
                by_hash = urllib.parse.urljoin(_suite_url(source),
                                               f"{folder}by-hash/SHA256/{index_file.sha256}")
            path = await self._download(by_hash, url, index_file)
            try:
                rows = await asyncio.to_thread(_read_packages, path, keep)
            finally:
                path.unlink(missing_ok=True)
            state.files[key] = index_file.sha256
            state.entries[key] = rows
            changed = True
        # Files of components or arches no longer asked about are dropped.
        kept = {f.path.rsplit("/", 1)[0] if "/" in f.path else "." for f in files}
        for key in list(state.files):
            if key not in kept:
                del state.files[key]
                state.entries.pop(key, None)
        state.wanted = sorted(keep)
        return changed

    async def _download(self, by_hash: str | None, url: str, expected: IndexFile) -> Path:
        """The file streamed to disk, no bigger than the Release says, checked against its
        SHA256. By-hash first; its 404 (a mirror without it) falls back to the path."""
        for candidate in (by_hash, url):
            if candidate is None:
                continue
            path = await self._fetch_to_file(candidate, expected.size, expected.sha256,
                                             missing_ok=candidate == by_hash)
            if path is not None:
                return path
        raise AssertionError("unreachable: the plain path never returns None")

    # -- Alpine -----------------------------------------------------------------

    async def _poll_apk(self, source: ApkRepository, state: IndexState, wanted: set[str],
                        arches: tuple[str, ...]) -> bool:
        if not source.pollable:
            raise IndexFetchError(f"{source.url}: only http(s) repositories are watched")
        if not arches:
            raise IndexFetchError("no architecture (the image has no /etc/apk/arch)")
        more = self._more_wanted(state, wanted)
        # Names asked about only grow: a name no layer installs any more costs nothing.
        keep = wanted | set(state.wanted)
        changed = False
        digests = []
        for arch in arches:
            url = f"{source.url}/{arch}/APKINDEX.tar.gz"
            validators = None if more else state.validators.get(url)
            path, headers = await self._fetch_conditional(url, validators)
            if path is None:  # 304
                digests.append(state.files.get(arch, ""))
                continue
            try:
                digest = _sha256_file(path)
                digests.append(digest)
                state.validators[url] = [headers.get("ETag"), headers.get("Last-Modified")]
                if state.files.get(arch) == digest and not more:
                    continue
                rows = await asyncio.to_thread(_read_apkindex, path, keep)
            finally:
                path.unlink(missing_ok=True)
            state.files[arch] = digest
            state.entries[arch] = rows
            changed = True
        state.url = f"{source.url}/{arches[0]}/APKINDEX.tar.gz"
        state.digest = "sha256:" + (digests[0] if len(digests) == 1 else hashlib.sha256(
            "".join(digests).encode()).hexdigest())
        # The path's last two segments ("v3.20/main"), never the host: a mirror's URL
        # may carry user:token@, and the suite travels in causes and provenance.
        state.suite = "/".join(urllib.parse.urlsplit(source.url).path.strip("/")
                               .split("/")[-2:]) or redact_text(source.url)
        state.security = False
        state.wanted = sorted(keep)
        return changed

    # -- HTTP -------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # trust_env: the host's HTTP(S)_PROXY, as apt on it would use its own proxy.
            self._session = aiohttp.ClientSession(timeout=self.timeout, trust_env=True,
                                                  auto_decompress=False)
        return self._session

    async def _get_small(self, url: str, validators: list[str | None] | None
                         ) -> tuple[int, Mapping[str, str], bytes]:
        headers = _conditional(validators)
        async with self._client().get(url, headers=headers) as resp:
            if resp.status != 200:
                return resp.status, resp.headers, b""
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_RELEASE_BYTES:
                    raise IndexFetchError(f"{url}: more than {MAX_RELEASE_BYTES >> 20} MiB: "
                                      "not a Release file")
            return resp.status, resp.headers, bytes(body)

    async def _fetch_to_file(self, url: str, size: int, sha256: str, *,
                             missing_ok: bool) -> Path | None:
        if size > self.max_index_bytes:
            raise IndexFetchError(f"{url}: {size} bytes, over the {self.max_index_bytes}-byte "
                              "limit for one index file")
        async with self._client().get(url) as resp:
            if resp.status == 404 and missing_ok:
                return None
            _check_status(url, resp.status, resp.headers)
            path, digest, got = await self._stream(resp, size)
        if got != size or digest != sha256:
            path.unlink(missing_ok=True)
            raise IndexFetchError(f"{url}: {got} bytes with sha256 {digest[:12]}…, the Release "
                              f"says {size} bytes and {sha256[:12]}… (a mirror mid-update?)")
        return path

    async def _fetch_conditional(self, url: str, validators: list[str | None] | None
                                 ) -> tuple[Path | None, Mapping[str, str]]:
        async with self._client().get(url, headers=_conditional(validators)) as resp:
            if resp.status == 304:
                _check_not_modified(url, validators)
                return None, resp.headers
            _check_status(url, resp.status, resp.headers)
            path, _, _ = await self._stream(resp, self.max_index_bytes)
            return path, resp.headers

    async def _stream(self, resp: aiohttp.ClientResponse, limit: int
                      ) -> tuple[Path, str, int]:
        """The body to a file in the work folder, at most ``limit`` bytes (one more byte
        is read to tell a longer body)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / f"index-{random.getrandbits(64):016x}"
        digest = hashlib.sha256()
        got = 0
        try:
            with path.open("wb") as out:
                async for chunk in resp.content.iter_chunked(1 << 16):
                    got += len(chunk)
                    if got > limit:
                        raise IndexFetchError(f"{resp.url}: longer than the {limit} bytes "
                                          "expected")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.hexdigest(), got


def _suite_url(source: AptSuite) -> str:
    """The folder holding the suite's Release: ``dists/SUITE/``, or a flat repository's."""
    if source.flat:
        return urllib.parse.urljoin(source.uri + "/", source.suite)
    return f"{source.uri}/dists/{source.suite}/"


def _conditional(validators: list[str | None] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if validators:
        etag, modified = [*validators, None, None][:2]
        if etag:
            headers["If-None-Match"] = etag
        if modified:
            headers["If-Modified-Since"] = modified
    return headers


def _check_not_modified(url: str, validators: list[str | None] | None) -> None:
    """A 304 says "what you have is current": to a question without validators (a
    first poll, or one that must read more package names) it says nothing, and taking
    it as "unchanged" would record names as read that never were."""
    if not _conditional(validators):
        raise IndexFetchError(f"{url}: HTTP 304 to a request that was not conditional "
                              "(a broken cache in between?)")


def _check_status(url: str, status: int, headers: Mapping[str, str]) -> None:
    if status == 200:
        return
    retry = None
    value = headers.get("Retry-After")
    if value is not None and value.strip().isdigit():
        retry = float(value.strip())
    raise IndexFetchError(f"{url}: HTTP {status}", retry)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Capped(io.RawIOBase):
    """A decompressed stream that stops with an error past ``limit`` bytes."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self.inner.read(len(view))
        self.seen += len(chunk)
        if self.seen > self.limit:
            raise IndexFormatError(f"decompresses to more than {self.limit} bytes")
        view[:len(chunk)] = chunk
        return len(chunk)


def _lines(stream: IO[bytes]) -> Iterator[str]:
    """The stream's lines, decoded; a line longer than ``MAX_LINE_BYTES`` is garbage
    (a file of one 2 GiB line would otherwise be one 2 GiB string)."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES:
            raise IndexFormatError(f"a line longer than {MAX_LINE_BYTES} bytes")
        yield line.decode("utf-8", errors="replace")


@contextlib.contextmanager
def _text_lines(path: Path) -> Iterator[Iterator[str]]:
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(path.open("rb"))
        head = raw.read(6)
        raw.seek(0)
        inner: IO[bytes] = raw
        if head.startswith(b"\xfd7zXZ"):
            inner = stack.enter_context(lzma.open(raw))
        elif head.startswith(b"\x1f\x8b"):
            inner = stack.enter_context(gzip.GzipFile(fileobj=raw))  # type: ignore[arg-type]
        yield _lines(io.BufferedReader(_Capped(inner, MAX_UNPACKED_BYTES), 1 << 16))


def _read_packages(path: Path, wanted: Collection[str]) -> list[list[str | None]]:
    try:
        with _text_lines(path) as lines:
            return [[e.name, e.version, e.arch, e.source, e.sha256]
                    for e in parse_packages(lines, wanted)]
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise IndexFormatError(f"not a readable Packages file: {exc}") from exc


def _read_apkindex(path: Path, wanted: Collection[str]) -> list[list[str | None]]:
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                if member.name == "APKINDEX" and member.isfile():
                    if member.size > MAX_UNPACKED_BYTES:
                        raise IndexFormatError("APKINDEX too large")
                    handle = tar.extractfile(member)
                    assert handle is not None
                    # Streamed, as a Packages file is: only the names asked about stay.
                    return [[e.name, e.version, e.arch, e.source, e.sha256]
                            for e in parse_apkindex(_lines(handle), wanted)]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IndexFormatError(f"not an APKINDEX.tar.gz: {exc}") from exc
    raise IndexFormatError("not an APKINDEX.tar.gz: no APKINDEX inside")


# --- polling one source forever ----------------------------------------------------------


Wanted = Callable[[], tuple[Collection[str], Collection[str]]]


class IndexPoller:
    """Polls one source every ``poll_s``; failures back off as the upstream pollers'
    do, up to the poll interval. What the daemon's ``status`` shows is in
    :meth:`status`. Each source has its own poller, so none waits on another."""

    def __init__(self, watch: IndexWatch, source: IndexSource, wanted: Wanted, poll_s: float,
                 on_change: Callable[[IndexSnapshot], Awaitable[None]], *,
                 on_error: Callable[[IndexFailure, float], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.watch = watch
        self.source = source
        self.wanted = wanted
        self.poll_s = poll_s
        self.on_change = on_change
        self.on_error = on_error
        self.rng = rng or random.Random()
        self.backoff = Backoff(base_s=min(5.0, poll_s), cap_s=poll_s)
        self.last_check: float | None = None
        self.next_delay_s = 0.0  # the first poll at once
        self.last_error: str | None = None

    async def check(self) -> float:
        """One poll; returns the delay before the next."""
        self.last_check = time.time()
        try:
            names, arches = self.wanted()
            result = await self.watch.poll(self.source, names, arches)
        except Exception as exc:
            # Whatever goes wrong, the poller lives on and tries again later.
            result = IndexFailure(self.source.id, f"{type(exc).__name__}: {exc}")
        if isinstance(result, IndexFailure):
            delay = self.backoff.failure(result.retry_after_s)
            self.last_error = result.message
            self.next_delay_s = delay
            if self.on_error is not None:
                self.on_error(result, delay)
            return delay
        self.backoff.success()
        self.last_error = None
        if isinstance(result, IndexSnapshot):
            await self.on_change(result)
        self.next_delay_s = jittered(self.poll_s, self.rng)
        return self.next_delay_s

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.next_delay_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
            delay = await self.check()

    def status(self) -> dict[str, Any]:
        state = self.watch.states.get(self.source.id)
        # The source as the image names it may hold a mirror's user:password@.
        return {"source": redact_text(self.source.id),
                "suite": state.suite if state else None,
                "date": state.date if state else None, "checked_at": self.last_check,
                "error": redact_text(self.last_error) if self.last_error else None,
                "failures": self.backoff.failures,
                "next_in_s": round(self.next_delay_s, 1)}
