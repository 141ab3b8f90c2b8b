"""Step 4 of a layer's build: record. The build is recorded as running before its
engine starts (crash recovery needs it), and its end with the layer's record
(one transaction, committed with the next build's start). The events a build
sends (``build_started``, ``build_finished``) go out from here, with the same
facts as the history row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.build.job import BuildJob, Built
from orchestrator.build.results import LayerResult
from orchestrator.build.state import AsyncStateStore, LayerRecord
from orchestrator.core.errors import BuildFailed
from orchestrator.core.model import Outcome
from orchestrator.engines.runner import first_error_line


class Recorder:
    def __init__(self, state: AsyncStateStore, log_dir: Path, *,
                 cause_of: Callable[[str], tuple[str | None, str | None]],
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.state = state
        self.log_dir = log_dir
        self.cause_of = cause_of  # layer -> (cause, request id), from whoever asked
        self.on_event = on_event

    @staticmethod
    def _bound(job: BuildJob) -> dict[str, Any]:
        return {"layer": job.layer.id, "build_id": job.build_id, "builder": job.engine.name,
                "platforms": list(job.layer.platforms)}

    async def started(self, job: BuildJob) -> None:
        """Recorded as running, with the cause chain; sets the key's first-built
        time (``job.created``), which the image carries."""
        _, key = job.ready
        job.log_path = self.log_dir / f"{job.build_id}.log"
        cause, job.request_id = self.cause_of(job.layer.id)
        parent = job.parent
        if parent is not None and parent.build_id is not None:  # the chain to the parent
            cause = f"{cause}; parent build {parent.build_id}" if cause else \
                f"parent build {parent.build_id}"
        job.cause = cause
        with job.clock.step("record"):
            job.created = await self.state.start_keyed_build(
                job.build_id, job.layer.id, key, job.decision.describe(), str(job.log_path),
                float(int(time.time())), cause=cause, request_id=job.request_id,
                builder=job.engine.name, base_ref=job.base.ref)
        job.started = time.time()
        self.on_event("build_started", {**self._bound(job), "reason": job.decision.describe(),
                                        "trigger": cause, "log": str(job.log_path)})

    async def built(self, job: BuildJob, built: Built, child_ref: str) -> LayerResult:
        inputs, key = job.ready
        with job.clock.step("record"):
            # One transaction: the build is done and the layer stands on its image.
            await self.state.finish_built(job.build_id, LayerRecord(
                job.layer.id, key, built.digest, child_ref, inputs, job.finished,
                built.platform_digests), steps=job.clock.rounded())
        steps = job.clock.rounded()
        self.on_event("build_finished", {
            **self._bound(job), "outcome": "built", "digest": built.digest,
            "image": job.names.repo.at(built.digest), "trigger": job.cause,
            "duration_s": round(job.finished - job.started, 3), "steps": steps})
        return LayerResult(job.layer.id, job.decision, Outcome.BUILT, built.digest, child_ref,
                           job.names.display_ref, key, job.build_id, str(job.log_path),
                           job.started, job.finished, job.engine.name, built.platform_digests,
                           steps)

    async def failed(self, job: BuildJob, exc: BaseException) -> None:
        log_tail = exc.log_tail if isinstance(exc, BuildFailed) else ""
        first = first_error_line(log_tail)
        await self.state.end_build(job.build_id, Outcome.FAILED.value,
                                   error=f"{first}\n{exc}" if first else str(exc),
                                   steps=job.clock.rounded())
        self.on_event("build_finished", {**self._bound(job), "outcome": "failed",
                                         "duration_s": round(time.time() - job.started, 3),
                                         "error": first or str(exc), "trigger": job.cause,
                                         "log": str(job.log_path)})

    async def cancelled(self, job: BuildJob) -> None:
        await asyncio.shield(self.state.end_build(job.build_id, Outcome.CANCELLED.value))
        self.on_event("build_finished", {**self._bound(job), "outcome": "cancelled",
                                         "duration_s": round(time.time() - job.started, 3)})

    async def reused(self, job: BuildJob, digest: str, child_ref: str,
                     platform_digests: dict[str, str]) -> None:
        """A layer found under its key: its record follows (the time it was built
        stays, unless the record named another image)."""
        previous = job.previous
        _, key = job.ready
        if previous is None or previous.build_key != key:
            assert job.inputs is not None
            await self.state.records.save(LayerRecord(
                job.layer.id, key, digest, child_ref, job.inputs,
                previous.built_at if previous and previous.digest == digest else time.time(),
                platform_digests))
