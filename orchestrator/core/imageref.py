"""Image references as registries see them. Pure.

``alpine`` means ``docker.io/library/alpine``; a first component with a "."
or ":" (or "localhost") is a registry host.
"""

from __future__ import annotations

from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class ImageRef:
    registry: str  # as written by users: "docker.io", "127.0.0.1:5000"
    repository: str  # "library/alpine", "base/python"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def at(self, digest: str) -> str:
        return f"{self.name}@{digest}"

    def tagged(self, tag: str) -> str:
        return f"{self.name}:{tag}"


def parse_repository(text: str) -> ImageRef:
    """A repository without tag or digest."""
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, text
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageRef(registry, path)
