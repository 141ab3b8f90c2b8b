"""The Builder protocol every backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BuildOutput:
    digest: str  # manifest digest in the registry when pushed, else the local image's


class Builder(Protocol):
    name: str

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


def docker_style_flags(req: BuildRequest, iidfile: Path) -> list[str]:
    """The flags ``buildah bud`` and ``docker build`` share, context last."""
    argv: list[str] = []
    for name, value in req.args.items():
        argv += ["--build-arg", f"{name}={value}"]
    for name, value in req.labels.items():
        argv += ["--label", f"{name}={value}"]
    for tag in req.tags:
        argv += ["--tag", tag]
    return [*argv, "--file", str(req.dockerfile), "--iidfile", str(iidfile), str(req.context)]


def raise_if_failed(req: BuildRequest, returncode: int | None) -> None:
    """A builder command that did not exit 0 fails the build, with its log's tail."""
    if returncode != 0:
        raise BuildFailed(req.layer, returncode, log_tail(req.log_path), str(req.log_path))
