"""Fakes for the seams of unit tests: a recording runner, a no-op builder, upstreams."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.model import ResolvedUpstream
from orchestrator.engines.base import BuildOutput, BuildRequest
from orchestrator.engines.runner import Captured


class RecordingRunner:
    """Records every argv; answers from ``responses`` (argv -> (rc, stdout))."""

    def __init__(self, on_run: Callable[[list[str]], int] | None = None,
                 capture: Callable[[list[str]], Captured] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str] | None] = []
        self._on_run = on_run or (lambda argv: 0)
        self._capture = capture or (lambda argv: Captured(0, "", ""))

    async def run(self, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                  timeout_s: float | None = None) -> int | None:
        self.calls.append(list(argv))
        self.envs.append(env)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write("$ " + " ".join(argv) + "\n")
        return self._on_run(list(argv))

    async def capture(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                      timeout_s: float = 300.0) -> Captured:
        self.calls.append(list(argv))
        self.envs.append(env)
        return self._capture(list(argv))


class MemoryBuilder:
    """A builder that builds nothing and remembers tags: for planning tests."""

    name = "memory"

    def __init__(self) -> None:
        self.images: dict[str, str] = {}
        self.built: list[str] = []

    async def build(self, request: BuildRequest) -> BuildOutput:
        digest = "sha256:" + hashlib.sha256(request.tags[-1].encode()).hexdigest()
        for tag in request.tags:
            self.images[tag] = digest
        self.built.append(request.layer)
        return BuildOutput(digest)

    async def local_digest(self, ref: str) -> str | None:
        return self.images.get(ref)

    def base_reference(self, repository: str, digest: str, key_tag_ref: str) -> str:
        return f"{repository}@{digest}"

    async def ping(self) -> None:
        return None


def fixed_upstreams(values: dict[str, tuple[str, str]]) -> Callable[..., Any]:
    """A stand-in for upstream.resolve_all: name -> (tag, digest)."""

    async def resolve_all(specs: Any, names: set[str], client: Any) -> Any:
        out = {}
        for name in names:
            tag, digest = values[name]
            spec = specs[name]
            ref = f"{spec.image}@{digest}" if spec.image else spec.git
            out[name] = ResolvedUpstream(name, ref, digest, tag)
        return out, {}

    return resolve_all
