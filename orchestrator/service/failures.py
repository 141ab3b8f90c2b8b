"""Layers whose builds keep failing: when to try them again.

Two kinds. A build that failed on its own (a broken Dockerfile) is not tried
again by itself: a change or a trigger does that, and a scheduled rebuild of it
backs off so it does not fail every check. A build whose image could not be
*published* (the registry went away between the engine's push and the tags) is
tried again by itself, with backoff, once the registry answers: nothing the
user changes would fix it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from orchestrator.registry.upstream import Backoff

RETRY_BASE_S = 5.0
RETRY_CAP_S = 300.0
SCHEDULE_BASE_S = 60.0


@dataclass(frozen=True)
class Failing:
    failures: int  # in a row
    not_before: float  # wall clock
    retry: bool  # tried again by itself when due


class Failures:
    def __init__(self) -> None:
        self.layers: dict[str, Failing] = {}

    def succeeded(self, layer: str) -> None:
        self.layers.pop(layer, None)

    def failed(self, layer: str, *, retry: bool, cap_s: float | None = None) -> Failing:
        failures = self.layers[layer].failures + 1 if layer in self.layers else 1
        backoff = Backoff(base_s=RETRY_BASE_S if retry else SCHEDULE_BASE_S,
                          cap_s=RETRY_CAP_S if retry else (cap_s or 3600.0))
        backoff.failures = failures - 1
        entry = Failing(failures, time.time() + backoff.failure(), retry)
        self.layers[layer] = entry
        return entry

    def waiting(self, layer: str, now: float) -> bool:
        """Whether a scheduled rebuild of ``layer`` must wait for its backoff."""
        entry = self.layers.get(layer)
        return entry is not None and now < entry.not_before

    def due_retries(self, now: float) -> list[str]:
        return sorted(lid for lid, entry in self.layers.items()
                      if entry.retry and entry.not_before <= now)

    def next_retry(self) -> float | None:
        times = [entry.not_before for entry in self.layers.values() if entry.retry]
        return min(times) if times else None

    def status(self) -> dict[str, dict[str, Any]]:
        return {lid: {"failures": e.failures, "next_try": e.not_before,
                      "by_itself": e.retry} for lid, e in self.layers.items()}
