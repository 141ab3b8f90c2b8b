"""One run over the hierarchy: each layer, once its parent is settled, goes through
named steps over one value (a :class:`~orchestrator.build.job.BuildJob`):

1. **decide** (``decide.py``): what it stands on, its inputs and build key, and
   whether an image under that key exists;
2. **run** (``execute.py``): on a pooled engine, from a snapshot of exactly the
   hashed files (``snapshot.py``), per platform;
3. **publish** (``publish.py``): attestations, the key tag, then the human tags;
4. **record** (``record.py``): the history row and the layer's record.

A layer found under its key is reused (its tags pointed back at it); a plan
is the decide step alone. Ready builds take the run's slots critical-path
first: the layer with the longest chain of expected build times below it goes
first, so a deep branch is not kept waiting behind a leaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.build.attest import Attestor
from orchestrator.build.decide import Decider
from orchestrator.build.execute import Executor
from orchestrator.build.job import BuildJob
from orchestrator.build.naming import Naming
from orchestrator.build.publish import Publisher
from orchestrator.build.record import Recorder
from orchestrator.build.results import LayerResult, RunReport
from orchestrator.build.scheduler import NodeResult, PrioritySlots, critical_paths, run_graph
from orchestrator.build.snapshot import ContextChanged, Snapshots, scratch_path
from orchestrator.build.state import AsyncStateStore
from orchestrator.catalog.context import Context
from orchestrator.core import graph
from orchestrator.core.errors import BuildFailed, InputError, StateWriteError
from orchestrator.core.model import Catalog, Config, Outcome, ResolvedUpstream
from orchestrator.engines.pool import BuilderPool, Member
from orchestrator.registry.client import RegistryClient

if TYPE_CHECKING:
    from orchestrator.build.packagefixes import FixView

# How often a layer whose context keeps changing under us is read again
# before the run gives up on it (the daemon's watcher queues it anyway).
SNAPSHOT_ATTEMPTS = 3


class Pipeline:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        pool: BuilderPool,
        state: AsyncStateStore,
        registry: RegistryClient | None,
        upstreams: Mapping[str, ResolvedUpstream],
        *,
        jobs: int | None = None,
        forced: frozenset[str] = frozenset(),
        dry_run: bool = False,
        revision: Callable[[], str | None] | None = None,
        upstream_errors: Mapping[str, Exception] | None = None,
        contexts: Mapping[str, Context | InputError] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        cause_of: Callable[[str], tuple[str | None, str | None]] | None = None,
        superseded: Callable[[list[str]], bool] | None = None,
        resolver: RegistryClient | None = None,
        attestor: Attestor | None = None,
        packages: FixView | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        self.state = state
        self.dry_run = dry_run
        self.forced = forced
        self.on_event = on_event or (lambda event, fields: None)
        # Given a layer and its ancestors: has any changed since the run began?
        self.superseded = superseded or (lambda lineage: False)
        self.parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
        self.running: dict[str, tuple[str, asyncio.Task[Any]]] = {}  # build id -> (layer, task)
        self.cancelled: set[str] = set()  # layers whose build was cancelled on request
        self.upstreams = dict(upstreams)
        self.engines = tuple(sorted({m.spec.backend for m in pool.members}))
        if config.registry and not config.registry.tls_verify and registry is not None:
            registry.allow_insecure(config.registry.host)
        self._steps(registry, resolver, attestor, dict(upstream_errors or {}),
                    dict(contexts or {}), cause_of or (lambda layer: (None, None)))
        self.decider.packages = packages  # package fixes: the key's pins (packagefixes.py)
        # --jobs caps the whole run; otherwise the engines' slots are the limit.
        self.slots = PrioritySlots(jobs or pool.capacity)
        self.priority: dict[str, float] = {}
        self.snapshots = Snapshots(inline=state.inline, scratch=functools.partial(
            scratch_path, config.scratch, config.state_dir))
        # The catalog's git commit, for the revision label: asked once, off the
        # event loop, and only when something builds.
        self._revision_of = revision or (lambda: None)
        self._revision: asyncio.Future[str | None] | None = None
        # Per engine: the parents of builds that were stopped or failed.
        self._leftovers: dict[str, tuple[Member, set[str]]] = {}
        self._housekeeping: set[asyncio.Task[None]] = set()

    def _steps(self, registry: RegistryClient | None, resolver: RegistryClient | None,
               attestor: Attestor | None, upstream_errors: dict[str, Exception],
               contexts: dict[str, Context | InputError],
               cause_of: Callable[[str], tuple[str | None, str | None]]) -> None:
        """The parts that carry out each step of a layer's build."""
        config, catalog = self.config, self.catalog
        local = self.pool.members[0].builder  # without a registry, images live in one store
        self.naming = Naming(config, self.upstreams, local)
        self.decider = Decider(config, catalog, self.naming, upstreams=self.upstreams,
                               upstream_errors=upstream_errors, registry=registry,
                               resolver=resolver, local=local, engines=self.engines,
                               contexts=contexts, records={}, forced=self.forced)
        self.executor = Executor(config, self.naming, self.decider, registry=registry,
                                 on_event=self.on_event)
        self.publisher = Publisher(config, catalog, registry=registry, attestor=attestor,
                                   upstreams=self.upstreams, on_event=self.on_event)
        self.recorder = Recorder(self.state, config.state_dir / "logs", cause_of=cause_of,
                                 on_event=self.on_event)

    def check_tags(self, order: list[str]) -> None:
        self.decider.check_tags(order)

    def cancel(self, build_id: str) -> bool:
        """Stop one running build (its process group); its descendants are skipped."""
        entry = self.running.get(build_id)
        if entry is None:
            return False
        layer, task = entry
        self.cancelled.add(layer)
        task.cancel()
        return True

    async def revision(self) -> str | None:
        if self._revision is None:
            self._revision = asyncio.ensure_future(asyncio.to_thread(self._revision_of))
        if self._revision.done():  # asked once per run, read by every build
            return self._revision.result()
        return await asyncio.shield(self._revision)

    async def run(self, order: list[str]) -> RunReport:
        parents = {lid: self.catalog.layers[lid].parent for lid in order}
        self.decider.records = await self.state.records.all(
            {*order, *filter(None, parents.values())})
        if not self.dry_run and self.config.build.order == "critical-path":
            self.priority = critical_paths(order, parents,
                                           await self.state.history.durations(order))
        try:
            results = await run_graph(order, parents, self.step, lambda r: r.outcome,
                                      self.cancelled)
        finally:
            # Shielded: a Ctrl-C lands here too, and the containers must still go.
            await asyncio.shield(self._finish_housekeeping())
            unrecorded = await asyncio.shield(self.state.commit_deferred())
            if self.snapshots.inline:
                self.snapshots.close()
            else:
                await asyncio.shield(asyncio.to_thread(self.snapshots.close))
        if unrecorded is not None:
            self._not_recorded(results, unrecorded)
        notes = []
        if self.dry_run:
            unreproducible = [m.name for m in self.pool.members if m.spec.backend != "buildah"]
            if unreproducible:
                notes.append("not reproducible on " + ", ".join(unreproducible) + ": this "
                             "engine stamps each build with its own time, so a forced or "
                             "scheduled rebuild always gives a new digest and rebuilds the "
                             "layers below")
        # Report in graph order, not in the order builds happened to finish.
        return RunReport({lid: results[lid] for lid in order}, self.upstreams, notes)

    def _not_recorded(self, results: dict[str, NodeResult[LayerResult]],
                      error: sqlite3.Error) -> None:
        """Builds whose images were made and pushed but whose records the state
        database refused (a full disk): failed, as a write in the build's own
        step would have made them. The next run finds each image under its key."""
        for lid in self.state.unsettled:
            if lid not in results:  # an earlier run's, still waiting
                continue
            value = results[lid].value
            digest = value.digest if value is not None else None
            results[lid] = NodeResult(Outcome.FAILED, error=StateWriteError(
                f"{lid}: built {digest}, but the state database could not record it "
                f"({error}); check the disk under {self.config.state_dir} and run again: "
                "the image is found under its build key"))
            self.on_event("state_write_failed", {"layer": lid, "digest": digest,
                                                 "error": str(error)})

    # -- one layer -------------------------------------------------------------

    async def step(self, layer_id: str, parent: LayerResult | None) -> LayerResult:
        # Announced before deciding: a free slot waits for it rather than go to a
        # lower-ranked layer that decided faster.
        self.slots.expect(layer_id, self.priority.get(layer_id, 0.0))
        try:
            return await self._step(layer_id, parent)
        finally:
            self.slots.withdraw(layer_id)

    async def _step(self, layer_id: str, parent: LayerResult | None) -> LayerResult:
        started = time.perf_counter()
        job = await self.decider.decide(layer_id, parent)
        decided = time.perf_counter() - started
        names, decision = job.names, job.decision
        if job.key is None:  # a plan whose parent would build first
            return LayerResult(layer_id, decision, Outcome.BUILT, None, None,
                               names.display_ref, None)
        if not decision.build:
            assert job.found is not None
            return await self._reuse(job, job.found)
        if self.dry_run:
            return LayerResult(layer_id, decision, Outcome.BUILT, None, None,
                               names.display_ref, job.key)
        if self.superseded(self._lineage(layer_id)):
            return LayerResult(layer_id, decision, Outcome.SUPERSEDED, None, None,
                               names.display_ref, job.key)
        job.clock.steps["decide"] = decided
        return await self._build(job)

    def _lineage(self, layer_id: str) -> list[str]:
        return [layer_id, *graph.ancestors(self.parents, layer_id)]

    async def _reuse(self, job: BuildJob, digest: str) -> LayerResult:
        _, key = job.ready
        child_ref = self.naming.child_ref(job.names, digest, key)
        per_platform: Mapping[str, str] = {}
        if self.executor.multi(job.layer):
            previous = job.previous
            per_platform = previous.platform_digests if previous is not None and \
                previous.digest == digest and previous.platform_digests else \
                await self.decider.platform_digests(job.names.repo, digest)
        if not self.dry_run:
            await self.publisher.reuse(job, digest)
            await self.recorder.reused(job, digest, child_ref, dict(per_platform))
        self.on_event("layer_up_to_date", {"layer": job.layer.id, "digest": digest})
        return LayerResult(job.layer.id, job.decision, Outcome.REUSED, digest, child_ref,
                           job.names.display_ref, key, platform_digests=per_platform)

    async def _build(self, job: BuildJob) -> LayerResult:
        """Build on a pooled engine; if the engine (not the build) fails, once more
        on another one."""
        tried: list[str] = []
        parent = job.parent
        while True:
            async with self.slots.take(self.priority.get(job.layer.id, 0.0), job.layer.id), \
                    self.pool.lease(prefer=parent.builder if parent else None,
                                    exclude=tried) as member:
                if self.superseded(self._lineage(job.layer.id)):  # a change arrived meanwhile
                    return LayerResult(job.layer.id, job.decision, Outcome.SUPERSEDED, None,
                                       None, job.names.display_ref, job.key)
                job.member = member
                try:
                    return await self._build_on(job)
                except BuildFailed:
                    engine_lost = len(self.pool) > 1 and not tried and \
                        not await self.pool.check(member)
                    if not engine_lost:
                        raise
                    tried.append(member.name)
                    self.on_event("build_retried", {"layer": job.layer.id,
                                                    "builder": member.name,
                                                    "reason": "builder stopped answering"})

    async def _build_on(self, job: BuildJob) -> LayerResult:
        job.build_id = os.urandom(6).hex()  # 48 random bits, as a uuid4's first 12 digits
        dest = self.config.state_dir / "builds" / job.build_id
        for attempt in range(SNAPSHOT_ATTEMPTS):
            assert job.context is not None
            try:
                async with contextlib.AsyncExitStack() as stack:
                    with job.clock.step("snapshot"):
                        context, dockerfile = await stack.enter_async_context(
                            self.snapshots.snapshot(job.layer, job.context, dest))
                    job.work = dockerfile.parent  # the build's private folder
                    return await self._run(job, context, dockerfile)
            except ContextChanged as exc:
                if attempt == SNAPSHOT_ATTEMPTS - 1:
                    raise BuildFailed(job.layer.id, None, str(exc), "") from exc
                self.on_event("context_changed", {"layer": job.layer.id, "path": exc.path})
                # Read it again; the key follows the content the engine will get.
                await self.decider.refresh(job)
                if job.found is not None:
                    return await self._reuse(job, job.found)
        raise AssertionError("unreachable")

    async def _run(self, job: BuildJob, context: Path, dockerfile: Path) -> LayerResult:
        """Record, run, publish, record: one build on the job's engine."""
        inputs, key = job.ready
        assert job.work is not None
        secrets = self.executor.secrets(job.layer, job.work)  # missing: fails before a record
        revision = await self.revision()  # before the build is recorded: it can wait
        await self.recorder.started(job)
        labels = self.naming.labels(job.layer, key, job.names.tags, job.base.name,
                                    inputs.parent_digest, job.created, revision)
        request = self.executor.request(job, labels, context, dockerfile, secrets)
        task = asyncio.current_task()
        assert task is not None
        self.running[job.build_id] = (job.layer.id, task)
        try:
            built = await self.executor.run(job, request)
            job.finished = time.time()
            await self.publisher.publish(job, built)
        except asyncio.CancelledError:
            self._left_behind(job)
            await self.recorder.cancelled(job)
            raise
        except Exception as exc:
            self._left_behind(job)  # a timeout stops the engine mid-step too
            await self.recorder.failed(job, exc)
            raise
        finally:
            self.running.pop(job.build_id, None)
        result = await self.recorder.built(job, built,
                                           self.naming.child_ref(job.names, built.digest, key))
        # Children do not wait for the engine's housekeeping.
        self._in_background(self.publisher.prune(job.engine, job, built.digest))
        return result

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._housekeeping.add(task)
        task.add_done_callback(self._housekeeping.discard)

    def _left_behind(self, job: BuildJob) -> None:
        if job.base.ref is not None:
            member = job.engine
            self._leftovers.setdefault(member.name, (member, set()))[1].add(job.base.ref)

    async def _finish_housekeeping(self) -> None:
        """Prunes still running, then working containers that stopped or failed
        builds left in their engines: buildah stopped while it sets up a RUN step
        exits without removing the container it just made. Removed once the run
        is over, when no build of it can be using them."""
        if self._housekeeping:
            await asyncio.gather(*self._housekeeping, return_exceptions=True)
        leftovers, self._leftovers = self._leftovers, {}
        for member, bases in leftovers.values():
            try:
                removed = await member.builder.clean_up_after_crash(bases)
            except Exception as exc:  # housekeeping: the next start tries again
                self.on_event("cleanup_failed", {"builder": member.name,
                                                 "error": f"{type(exc).__name__}: {exc}"})
                continue
            if removed:
                self.on_event("containers_removed", {"builder": member.name,
                                                     "removed": removed})
