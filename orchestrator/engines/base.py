"""The Builder protocol every backend implements."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from orchestrator.core.errors import BuildFailed
from orchestrator.engines.runner import log_tail


@dataclass(frozen=True)
class BuildRequest:
    layer: str
    context: Path
    dockerfile: Path
    args: Mapping[str, str]  # BASE_IMAGE included, pinned by digest
    labels: Mapping[str, str]
    tags: tuple[str, ...]  # full references; the build-key tag comes last
    push: bool  # push every tag, the build-key tag last (it marks the image complete)
    log_path: Path
    timeout_s: float
    # Forced and scheduled rebuilds exist to pick up what a step cache would
    # hide (a new `apk upgrade`): they never reuse cached steps.
    no_cache: bool = False
    # Seconds since the epoch for the image's created time and every file time
    # in its new layers, where the engine can fix them (reproducible output).
    timestamp: int | None = None
    # This build's private folder (removed afterwards): scratch files go here,
    # never to /tmp, so nothing is left behind by a crash.
    work_dir: Path | None = None
    # Images the Dockerfile names literally -> the exact reference to use
    # ("debian:bookworm" -> "mirror/library/debian@sha256:…"). The user's file
    # is never edited: engines use named contexts, or a pinned copy of it.
    from_pins: Mapping[str, str] = field(default_factory=dict)
    # Build secrets: id -> a file holding the value (RUN --mount=type=secret,id=…).
    secrets: Mapping[str, Path] = field(default_factory=dict)
    # A registry repository the engines share their build cache through, and this
    # layer's tag in it (``[registry] cache``): a build placed on an engine that
    # did not build the layer before does not start cold.
    cache_repo: str | None = None
    cache_tag: str | None = None
    platform: str | None = None  # build for this platform (another than the host's: QEMU)


@dataclass(frozen=True)
class BuildOutput:
    digest: str  # manifest digest in the registry when pushed, else the local image's


class Builder(Protocol):
    name: str
    version: str | None  # the engine's version once it answered a ping (for provenance)

    async def build(self, request: BuildRequest) -> BuildOutput:
        """Build (and push); raise BuildFailed with the log's tail on failure."""
        ...

    async def local_digest(self, ref: str) -> str | None:
        """Digest of an image in the local store, None when it is not there."""
        ...

    def base_reference(self, repository: str, digest: str, key_tag_ref: str) -> str:
        """How a child's BASE_IMAGE names a parent only held locally."""
        ...

    async def ping(self) -> None:
        """Raise BackendError when the engine cannot build."""
        ...

    async def prune_local(self, repository: str, label: str, keep: int,
                          protect: set[str]) -> int:
        """Remove this layer's older images from the local store: those named under
        ``repository`` with ``label``, beyond the newest ``keep``, except digests in
        ``protect``. Returns how many were removed."""
        ...

    async def clean_up_after_crash(self, base_refs: set[str]) -> int:
        """Remove what builds killed with the daemon left in the engine (working
        containers made from ``base_refs``, the exact parents those builds stood
        on); returns how many things were removed."""
        ...


def docker_style_flags(req: BuildRequest, iidfile: Path,
                       dockerfile: Path | None = None) -> list[str]:
    """The flags ``buildah bud`` and ``docker build`` share, context last."""
    argv: list[str] = []
    for name, value in req.args.items():
        argv += ["--build-arg", f"{name}={value}"]
    for name, value in req.labels.items():
        argv += ["--label", f"{name}={value}"]
    for tag in req.tags:
        argv += ["--tag", tag]
    for name, path in sorted(req.secrets.items()):
        argv += ["--secret", f"id={name},src={path}"]
    if req.platform:
        argv += ["--platform", req.platform]
    return [*argv, "--file", str(dockerfile or req.dockerfile), "--iidfile", str(iidfile),
            str(req.context)]


def raise_if_failed(req: BuildRequest, returncode: int | None) -> None:
    """A builder command that did not exit 0 fails the build, with its log's tail."""
    if returncode != 0:
        raise BuildFailed(req.layer, returncode, log_tail(req.log_path), str(req.log_path))


@contextlib.contextmanager
def scratch(req: BuildRequest) -> Iterator[Path]:
    """A folder for the engine's scratch files (iidfile, digest file): inside the
    build's own folder when it has one (removed with it, and by the next start
    after a crash), else a temporary one."""
    if req.work_dir is not None:
        req.work_dir.mkdir(parents=True, exist_ok=True)
        yield req.work_dir
        return
    with tempfile.TemporaryDirectory(prefix="orchestrator-") as tmp:
        yield Path(tmp)
