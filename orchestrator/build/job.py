"""The value a layer's build passes from step to step, and the clock of its steps.

``decide`` makes a :class:`BuildJob` (what the layer stands on, its inputs, key
and decision); ``run`` gives it an engine, a build id and a work folder;
``publish`` and ``record`` read it. Each step reads what the ones before it
set, so no step takes a dozen arguments and each is testable alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.build.naming import ImageNames
from orchestrator.build.results import LayerResult
from orchestrator.build.state import LayerRecord
from orchestrator.catalog.context import Context
from orchestrator.core.model import Decision, Inputs, Layer
from orchestrator.core.packagefix import Fix
from orchestrator.core.provenance import PackageIndex
from orchestrator.engines.pool import Member


@dataclass(frozen=True)
class Base:
    """What a layer stands on."""

    ref: str | None  # what BASE_IMAGE names; None in a plan whose parent would build first
    name: str  # for the base.name label and humans
    digest: str | None


class StepClock:
    """Seconds spent in each named step of one build (a step entered twice adds up)."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.steps.items()}


@dataclass
class BuildJob:
    layer: Layer
    names: ImageNames
    base: Base
    parent: LayerResult | None  # the parent's result in this run (None: outside it)
    previous: LayerRecord | None  # the layer's record as the run began
    decision: Decision
    context: Context | None = None  # None in a plan whose parent would build first
    inputs: Inputs | None = None
    key: str | None = None
    pins: dict[str, str] = field(default_factory=dict)  # FROM text -> pinned reference
    found: str | None = None  # the digest already under the key (reuse)
    fixes: tuple[Fix, ...] = ()  # package fixes this build takes in (its key pins them)
    fix_indexes: tuple[PackageIndex, ...] = ()  # the index snapshots that offered them
    clock: StepClock = field(default_factory=StepClock)
    # Set by the run step.
    build_id: str = ""
    member: Member | None = None
    work: Path | None = None  # the build's private folder (the snapshot's)
    log_path: Path | None = None
    cause: str | None = None
    request_id: str | None = None
    created: float = 0.0  # when the key was first built: the image's time
    started: float = 0.0  # wall clock around the engine's work
    finished: float = 0.0

    @property
    def ready(self) -> tuple[Inputs, str]:
        """The inputs and key of a job that builds (decide set both)."""
        assert self.inputs is not None and self.key is not None
        return self.inputs, self.key

    @property
    def engine(self) -> Member:
        assert self.member is not None
        return self.member


@dataclass(frozen=True)
class Built:
    """What the engine made: the image, and per platform what it was built FROM."""

    digest: str  # the image; an index when ``multi``
    images: dict[str, str]  # platform -> the image built for it (one entry for one platform)
    parents: dict[str, str]  # platform -> the parent manifest it stood on
    multi: bool = False

    @property
    def platform_digests(self) -> dict[str, str]:
        """What a layer record keeps: each platform's manifest of an index."""
        return self.images if self.multi else {}
