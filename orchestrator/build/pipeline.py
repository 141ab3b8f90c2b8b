"""One run over the hierarchy: resolve inputs, look build keys up, build what is stale.

For each layer, once its parent is settled: read the context, compute the
build key with the parent's digest, look for an image carrying that key
(registry, or local store when no registry is configured), and build only
when none exists or the layer is forced/due. The same walk in dry-run mode
is ``plan``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.build.scheduler import NodeResult, run_graph
from orchestrator.build.state import LayerRecord, StateStore
from orchestrator.catalog.context import Context, read_context
from orchestrator.core import graph
from orchestrator.core.buildkey import build_key, key_tag
from orchestrator.core.errors import BuildFailed
from orchestrator.core.imageref import ImageRef, parse_repository
from orchestrator.core.model import (
    Catalog,
    Config,
    Decision,
    Inputs,
    Layer,
    Outcome,
    Reason,
    ResolvedUpstream,
)
from orchestrator.core.plan import decide, is_due
from orchestrator.core.templates import expand, placeholders, upstream_values
from orchestrator.engines.base import BuildRequest
from orchestrator.engines.pool import BuilderPool, Member
from orchestrator.engines.runner import first_error_line
from orchestrator.registry.client import RegistryClient

LOCAL_REGISTRY = "localhost"


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


@dataclass
class RunReport:
    results: dict[str, NodeResult[LayerResult]] = field(default_factory=dict)
    upstreams: dict[str, ResolvedUpstream] = field(default_factory=dict)

    def by_outcome(self, outcome: Outcome) -> list[str]:
        return [lid for lid, r in self.results.items() if r.outcome is outcome]

    @property
    def ok(self) -> bool:
        return all(r.outcome in (Outcome.BUILT, Outcome.REUSED, Outcome.SUPERSEDED)
                   for r in self.results.values())


def targets(catalog: Catalog, selected: list[str] | None) -> list[str]:
    """Layers a run covers, parents first: everything, or the selected layers,
    their descendants, and the ancestors they stand on (kept up to date too)."""
    parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
    if not selected:
        return list(catalog.layers)
    wanted = graph.descendants(parents, selected)
    for lid in selected:
        wanted.update(graph.ancestors(parents, lid))
    return [lid for lid in catalog.layers if lid in wanted]


def upstreams_used(layer: Layer) -> set[str]:
    """Upstreams a layer stands on or names in its tags and args."""
    names = {layer.upstream} if layer.upstream else set()
    for text in (*layer.tags, *(v for _, v in layer.args)):
        for name in placeholders(text):
            parts = name.strip().split(".")
            if len(parts) == 3 and parts[0] == "upstream":
                names.add(parts[1])
    return names


class Pipeline:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        pool: BuilderPool,
        state: StateStore,
        registry: RegistryClient | None,
        upstreams: Mapping[str, ResolvedUpstream],
        *,
        jobs: int | None = None,
        forced: frozenset[str] = frozenset(),
        dry_run: bool = False,
        revision: Callable[[], str | None] | None = None,
        upstream_errors: Mapping[str, Exception] | None = None,
        contexts: Mapping[str, Context] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        cause_of: Callable[[str], tuple[str | None, str | None]] | None = None,
        superseded: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        # Without a registry, images live in one engine's store: a pool of one.
        self.local = pool.members[0].builder
        self.state = state
        self.registry = registry
        self.upstreams = dict(upstreams)
        self.upstream_errors = dict(upstream_errors or {})
        self.contexts = dict(contexts or {})
        # layer -> (cause, request id) for the build history; daemon-provided
        self.cause_of = cause_of or (lambda layer: (None, None))
        self.superseded = superseded or (lambda layer: False)
        self.running: dict[str, tuple[str, asyncio.Task[Any]]] = {}  # build id -> (layer, task)
        self.cancelled: set[str] = set()  # layers whose build was cancelled on request
        self.forced = forced
        self.dry_run = dry_run
        # The catalog's git commit, for the revision label: asked once, off the
        # event loop, and only when something builds.
        self._revision_of = revision or (lambda: None)
        self._revision: asyncio.Future[str | None] | None = None
        self.on_event = on_event or (lambda event, fields: None)
        # --jobs caps the whole run; otherwise the engines' slots are the limit.
        self.slots = asyncio.Semaphore(jobs or pool.capacity)
        self.log_dir = config.state_dir / "logs"
        self._values: dict[str, str] = {}
        for up in self.upstreams.values():
            self._values.update(upstream_values(up.name, up.tag, up.digest))
        if config.registry and not config.registry.tls_verify and registry is not None:
            registry.allow_insecure(config.registry.host)

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
        return await asyncio.shield(self._revision)

    async def run(self, order: list[str]) -> RunReport:
        parents = {lid: self.catalog.layers[lid].parent for lid in order}
        results = await run_graph(order, parents, self.step, lambda r: r.outcome,
                                  self.cancelled)
        # Report in graph order, not in the order builds happened to finish.
        return RunReport({lid: results[lid] for lid in order}, self.upstreams)

    # -- one layer -------------------------------------------------------

    def repository(self, layer: Layer) -> ImageRef:
        if self.config.registry is not None:
            return parse_repository(self.config.registry.repository(layer.image))
        return ImageRef(LOCAL_REGISTRY, layer.image)

    async def step(self, layer_id: str, parent: LayerResult | None) -> LayerResult:
        layer = self.catalog.layers[layer_id]
        for name in upstreams_used(layer):
            if name in self.upstream_errors:
                raise self.upstream_errors[name]
        repo = self.repository(layer)
        display_ref = repo.tagged(layer.tags[0]) if layer.tags else repo.name
        parent_is_upstream = layer.upstream is not None
        base_ref, base_name, parent_digest = self._parent(layer, parent)
        forced = layer_id in self.forced
        previous = self.state.layer(layer_id)
        args = tuple((k, expand(v, self._values)) for k, v in layer.args)

        if parent_digest is None:  # plan only: the parent would build first
            decision = decide(layer_id, None, None, image_found=False, forced=forced)
            return LayerResult(layer_id, decision, Outcome.BUILT, None, None, display_ref, None)

        if layer_id in self.contexts:
            inputs = self._inputs(layer, args, parent_digest)
        else:  # not read up front: read it off the event loop
            inputs = await asyncio.to_thread(self._inputs, layer, args, parent_digest)
        key = build_key(inputs)
        key_ref = repo.tagged(key_tag(key))
        found = None if forced else await self._lookup(repo, key_ref, key)
        due = is_due(previous.built_at if previous else None, layer.rebuild_every_s, time.time())
        decision = decide(layer_id, inputs, previous.inputs if previous else None,
                          image_found=found is not None, forced=forced, due=due,
                          parent_is_upstream=parent_is_upstream)

        if not decision.build:
            assert found is not None
            child_ref = self._child_ref(repo, found, key_ref)
            if not self.dry_run:
                await self._point_tags(layer, repo, found)
            if not self.dry_run and (previous is None or previous.build_key != key):
                self.state.save_layer(LayerRecord(
                    layer_id, key, found, child_ref, inputs,
                    previous.built_at if previous and previous.digest == found else time.time()))
            self.on_event("layer_up_to_date", {"layer": layer_id, "digest": found})
            return LayerResult(layer_id, decision, Outcome.REUSED, found, child_ref,
                               display_ref, key)
        if self.dry_run:
            return LayerResult(layer_id, decision, Outcome.BUILT, None, None, display_ref, key)
        if self.superseded(layer_id):
            return LayerResult(layer_id, decision, Outcome.SUPERSEDED, None, None, display_ref,
                               key)

        assert base_ref is not None
        tags = (*(repo.tagged(t) for t in layer.tags if t != key_tag(key)), key_ref)
        labels = self._labels(layer, key, base_name, parent_digest, await self.revision())
        return await self._build(layer, decision, inputs, key, key_ref, repo, base_ref,
                                 args, labels, tags, display_ref, parent)

    def _parent(self, layer: Layer,
                parent: LayerResult | None) -> tuple[str | None, str, str | None]:
        """(BASE_IMAGE reference, human name, digest) of what the layer stands on."""
        if layer.upstream is not None:  # resolved: step() raised already if it was not
            up = self.upstreams[layer.upstream]
            spec = self.catalog.upstreams[layer.upstream]
            name = f"{spec.image}:{up.tag}" if spec.image else f"{spec.git}#{up.tag}"
            return up.ref, name, up.digest
        if parent is None:
            # The parent is outside this run: stand on its last recorded image.
            assert layer.parent is not None
            record = self.state.layer(layer.parent)
            if record is None:
                raise BuildFailed(layer.id, None, f"parent {layer.parent} has never been "
                                  f"built: run `orchestrator build {layer.parent}`", "")
            return record.ref, record.ref, record.digest
        return parent.base_ref, parent.display_ref, parent.digest

    def _inputs(self, layer: Layer, args: tuple[tuple[str, str], ...],
                parent_digest: str) -> Inputs:
        context = self.contexts.get(layer.id) or read_context(layer)
        return Inputs(context.dockerfile, context.files, args, parent_digest)

    async def _lookup(self, repo: ImageRef, key_ref: str, key: str) -> str | None:
        if self.registry is not None and self.config.registry is not None:
            return await self.registry.manifest_digest(repo, key_tag(key))
        return await self.local.local_digest(key_ref)

    async def _point_tags(self, layer: Layer, repo: ImageRef, digest: str) -> None:
        """A reused image gets the layer's tags back: after a revert, ``app:1.0``
        must name the image built from the source as it is now."""
        if self.registry is None:
            return  # a local store: the key tag is what children use
        for tag in layer.tags:
            resolved = expand(tag, self._values)
            if await self.registry.retag(repo, digest, resolved):
                self.on_event("tag_moved", {"layer": layer.id, "tag": resolved,
                                            "digest": digest})

    def _child_ref(self, repo: ImageRef, digest: str, key_ref: str) -> str:
        if self.config.registry is not None:
            return repo.at(digest)
        return self.local.base_reference(repo.name, digest, key_ref)

    def _labels(self, layer: Layer, key: str, base_name: str, base_digest: str,
                revision: str | None) -> dict[str, str]:
        oci = "org.opencontainers.image"
        # Always set: labels are inherited, so a layer without tags would
        # otherwise show its parent's version.
        version = layer.tags[0] if layer.tags else f"{key_tag(key)[:15]}"
        labels = {
            f"{oci}.title": layer.image,
            f"{oci}.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            f"{oci}.source": self.config.build.source or layer.folder.as_uri(),
            f"{oci}.base.name": base_name,
            f"{oci}.base.digest": base_digest,
            f"{self.config.build.label_prefix}.build-key": key,
            f"{self.config.build.label_prefix}.layer": layer.id,
        }
        labels[f"{oci}.version"] = expand(version, self._values)
        if revision:
            labels[f"{oci}.revision"] = revision
        return labels

    async def _build(self, layer: Layer, decision: Decision, inputs: Inputs, key: str,
                     key_ref: str, repo: ImageRef, base_ref: str,
                     args: tuple[tuple[str, str], ...], labels: dict[str, str],
                     tags: tuple[str, ...], display_ref: str,
                     parent: LayerResult | None) -> LayerResult:
        """Build on a pooled engine; if the engine (not the build) fails, once more
        on another one."""
        tried: list[str] = []
        while True:
            async with self.slots, self.pool.lease(
                    prefer=parent.builder if parent else None, exclude=tried) as member:
                if self.superseded(layer.id):  # a change arrived while this waited
                    return LayerResult(layer.id, decision, Outcome.SUPERSEDED, None, None,
                                       display_ref, key)
                try:
                    return await self._build_on(member, layer, decision, inputs, key,
                                                key_ref, repo, base_ref, args, labels, tags,
                                                display_ref, parent)
                except BuildFailed:
                    engine_lost = len(self.pool) > 1 and not tried and \
                        not await self.pool.check(member)
                    if not engine_lost:
                        raise
                    tried.append(member.name)
                    self.on_event("build_retried", {"layer": layer.id, "builder": member.name,
                                                    "reason": "builder stopped answering"})

    async def _build_on(self, member: Member, layer: Layer, decision: Decision,
                        inputs: Inputs, key: str, key_ref: str, repo: ImageRef,
                        base_ref: str, args: tuple[tuple[str, str], ...],
                        labels: dict[str, str], tags: tuple[str, ...], display_ref: str,
                        parent: LayerResult | None) -> LayerResult:
        build_id = uuid.uuid4().hex[:12]
        log_path = self.log_dir / f"{build_id}.log"
        request = BuildRequest(
            layer=layer.id,
            context=layer.folder,
            dockerfile=layer.dockerfile,
            args={"BASE_IMAGE": base_ref, **{k: expand(v, self._values) for k, v in args}},
            labels=labels,
            tags=tuple(expand(t, self._values) for t in tags),
            push=self.config.registry is not None,
            log_path=log_path,
            timeout_s=self.config.build.timeout_s,
            no_cache=decision.reason in (Reason.FORCED, Reason.SCHEDULED),
        )
        cause, request_id = self.cause_of(layer.id)
        if parent is not None and parent.build_id is not None:  # the chain to the parent
            cause = f"{cause}; parent build {parent.build_id}" if cause else \
                f"parent build {parent.build_id}"
        self.state.start_build(build_id, layer.id, key, decision.describe(), str(log_path),
                               cause=cause, request_id=request_id, builder=member.name)
        task = asyncio.current_task()
        assert task is not None
        self.running[build_id] = (layer.id, task)
        started = time.time()
        bound = {"layer": layer.id, "build_id": build_id, "builder": member.name}
        self.on_event("build_started", {**bound, "reason": decision.describe(),
                                        "trigger": cause, "log": str(log_path)})
        try:
            output = await member.builder.build(request)
        except asyncio.CancelledError:
            self.state.finish_build(build_id, Outcome.CANCELLED.value)
            self.on_event("build_finished", {**bound, "outcome": "cancelled",
                                             "duration_s": round(time.time() - started, 3)})
            raise
        except BuildFailed as exc:
            first = first_error_line(exc.log_tail)
            self.state.finish_build(build_id, Outcome.FAILED.value,
                                    error=f"{first}\n{exc}" if first else str(exc))
            self.on_event("build_finished", {**bound, "outcome": "failed",
                                             "duration_s": round(time.time() - started, 3),
                                             "error": first or str(exc)})
            raise
        finally:
            self.running.pop(build_id, None)
        finished = time.time()
        child_ref = self._child_ref(repo, output.digest, key_ref)
        self.state.finish_build(build_id, Outcome.BUILT.value, digest=output.digest)
        self.state.save_layer(LayerRecord(layer.id, key, output.digest, child_ref, inputs,
                                          finished))
        self.on_event("build_finished", {**bound, "outcome": "built", "digest": output.digest,
                                         "duration_s": round(finished - started, 3)})
        return LayerResult(layer.id, decision, Outcome.BUILT, output.digest, child_ref,
                           display_ref, key, build_id, str(log_path), started, finished,
                           member.name)
