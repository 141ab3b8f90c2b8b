"""What a run did with each layer, and the run as a whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.build.scheduler import STOPPED, NodeResult
from orchestrator.core.model import Decision, Outcome, ResolvedUpstream


@dataclass(frozen=True)
class LayerResult:
    """What a run did with one layer, and what its children stand on."""

    layer: str
    decision: Decision
    outcome: Outcome  # BUILT or REUSED (up to date); for plans REUSED = would not build
    digest: str | None  # None in a plan for a layer that would build
    base_ref: str | None  # what a child's BASE_IMAGE names
    display_ref: str  # repository:tag, for base.name labels and humans
    key: str | None
    build_id: str | None = None
    log_path: str | None = None
    started: float | None = None  # wall clock around the builder call
    finished: float | None = None
    builder: str | None = None  # the engine that built it (None: reused)
    # A multi-platform image: platform -> manifest digest (what each platform's
    # children are built FROM); empty for a single-platform image.
    platform_digests: Mapping[str, str] = field(default_factory=dict)
    # Where the build's time went, step by step (seconds); empty when reused.
    steps: Mapping[str, float] = field(default_factory=dict)


@dataclass
class RunReport:
    results: dict[str, NodeResult[LayerResult]] = field(default_factory=dict)
    upstreams: dict[str, ResolvedUpstream] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. engines that cannot be reproducible
    # Package fixes: pending (and what they rebuild), not applied, waiting on an upstream.
    packages: list[dict[str, Any]] = field(default_factory=list)

    def by_outcome(self, outcome: Outcome) -> list[str]:
        return [lid for lid, r in self.results.items() if r.outcome is outcome]

    def deferred(self) -> set[str]:
        """Layers not built because a newer change to them (or an ancestor) is
        queued: superseded, and what was skipped below a superseded layer."""
        out: set[str] = set()
        for lid in self.results:
            cause = self.root_cause(lid)
            if cause is not None and self.results[cause].outcome is Outcome.SUPERSEDED:
                out.add(lid)
        return out

    def root_cause(self, lid: str) -> str | None:
        """The layer whose outcome stopped ``lid`` (itself, or the ancestor a skip
        goes back to); None when ``lid`` was not stopped."""
        seen = set()
        while lid not in seen:
            seen.add(lid)
            result = self.results.get(lid)
            if result is None or result.outcome not in STOPPED:
                return None
            if result.outcome is not Outcome.SKIPPED or result.blocked_by is None:
                return lid
            lid = result.blocked_by
        return None

    @property
    def ok(self) -> bool:
        """No build failed: everything built, reused, or deferred to a follow-up."""
        deferred = self.deferred()
        return all(r.outcome in (Outcome.BUILT, Outcome.REUSED) or lid in deferred
                   for lid, r in self.results.items())
