"""One run over the hierarchy: resolve inputs, look build keys up, build what is stale.

For each layer, once its parent is settled: take the context read at the start
of the run, compute the build key with the parent's digest, look for an image
carrying that key (registry, or local store when no registry is configured),
and build only when none exists or the layer is forced/due. The same walk in
dry-run mode is ``plan``.

A build runs on a snapshot of exactly the hashed files (``snapshot.py``), with
a timestamp fixed by the key (the time the key was first built), so that a
rebuild of unchanged inputs on an engine that honours it gives the same image,
and the cascade stops there.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.build.attest import Attestor
from orchestrator.build.scheduler import STOPPED, NodeResult, run_graph
from orchestrator.build.snapshot import ContextChanged, Snapshots, remove_tree, scratch_path
from orchestrator.build.state import AsyncStateStore, LayerRecord
from orchestrator.catalog.context import Context, read_context
from orchestrator.catalog.layers import host_platform
from orchestrator.catalog.parents import build_bases
from orchestrator.catalog.tomlfile import display
from orchestrator.core import graph
from orchestrator.core.buildkey import build_key, context_digest, key_tag
from orchestrator.core.errors import BuildFailed, InputError, StateWriteError, TemplateError
from orchestrator.core.imageref import ImageRef, check_tag, parse_reference, parse_repository
from orchestrator.core.model import (
    BaseUse,
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
from orchestrator.core.platforms import tag_suffix
from orchestrator.core.templates import expand, placeholders, upstream_values
from orchestrator.engines.base import BuildOutput, BuildRequest
from orchestrator.engines.pool import BuilderPool, Member
from orchestrator.engines.runner import first_error_line
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.index import image_platform, platform_manifests, push_index

LOCAL_REGISTRY = "localhost"
# How often a layer whose context keeps changing under us is read again
# before the run gives up on it (the daemon's watcher queues it anyway).
SNAPSHOT_ATTEMPTS = 3


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


@dataclass
class RunReport:
    results: dict[str, NodeResult[LayerResult]] = field(default_factory=dict)
    upstreams: dict[str, ResolvedUpstream] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. engines that cannot be reproducible

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


_NOT_IN_TAGS = re.compile(r"[^A-Za-z0-9_.-]")


# What a file:// URI keeps unquoted (RFC 3986 unreserved, and the slashes).
_URI_PLAIN = re.compile(r"/[A-Za-z0-9_.~/-]*")


def _folder_uri(folder: Path) -> str:
    """A layer folder as a file:// URI (quoted). Most paths need no quoting, and
    every build asks: those skip as_uri's encoding and quoting."""
    text = str(folder)
    return "file://" + text if _URI_PLAIN.fullmatch(text) else folder.as_uri()


def upstreams_used(layer: Layer) -> set[str]:
    """Upstreams a layer stands on, names in its tags and args, or uses as another
    base (a builder stage's FROM)."""
    names = {layer.upstream} if layer.upstream else set()
    names.update(base.upstream for base in layer.bases if base.upstream)
    for text in (*layer.tags, *(v for _, v in layer.args)):
        for name in placeholders(text):
            parts = name.strip().split(".")
            if len(parts) == 3 and parts[0] == "upstream":
                names.add(parts[1])
    return names


def _dockerfile_text(layer: Layer, context: Context) -> str:
    """The Dockerfile whose digest the key holds (read again: a context keeps the digest)."""
    try:
        data = layer.dockerfile.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(display(layer.dockerfile), f"cannot read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != context.dockerfile:
        raise BuildFailed(layer.id, None, f"{display(layer.dockerfile)} changed while this run "
                          "read it; the next run builds what it says now", "")
    return text


@functools.lru_cache(maxsize=256)  # the builds of a run share a handful of seconds
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.pool = pool
        # Without a registry, images live in one engine's store: a pool of one.
        self.local = pool.members[0].builder
        self.state = state
        self.registry = registry
        # For images a Dockerfile names that nothing watches: looked up once a run.
        self.resolver = resolver or registry
        self._externals: dict[str, asyncio.Future[str]] = {}
        self.attestor = attestor  # provenance + SBOM after each push (registry mode)
        self.upstreams = dict(upstreams)
        self.upstream_errors = dict(upstream_errors or {})
        self.contexts = dict(contexts or {})
        self.engines = tuple(sorted({m.spec.backend for m in pool.members}))
        self.host = host_platform()
        # layer -> (cause, request id) for the build history; daemon-provided
        self.cause_of = cause_of or (lambda layer: (None, None))
        # Given a layer and its ancestors: has any changed since the run began?
        self.superseded = superseded or (lambda lineage: False)
        self.parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
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
        self.work_dir = config.state_dir / "builds"
        self.snapshots = Snapshots(inline=state.inline, scratch=functools.partial(
            scratch_path, config.scratch, config.state_dir))
        # Per engine: the parents of builds that were stopped or failed.
        self._leftovers: dict[str, tuple[Member, set[str]]] = {}
        self._values: dict[str, str] = {}
        # Each layer's record as the run began, read in one query by run(): a
        # layer's own record is written only by its own step, after it was read.
        self._records: dict[str, LayerRecord] = {}
        self._upstreams_of: dict[str, set[str]] = {}
        for up in self.upstreams.values():
            self._values.update(upstream_values(up.name, up.tag, up.digest,
                                                up.ref.split("@", 1)[0]))
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
        if self._revision.done():  # asked once per run, read by every build
            return self._revision.result()
        return await asyncio.shield(self._revision)

    async def run(self, order: list[str]) -> RunReport:
        parents = {lid: self.catalog.layers[lid].parent for lid in order}
        self._records = await self.state.layers({*order, *filter(None, parents.values())})
        try:
            results = await run_graph(order, parents, self.step, lambda r: r.outcome,
                                      self.cancelled)
        finally:
            # Shielded: a Ctrl-C lands here too, and the containers must still go.
            await asyncio.shield(self._clear_leftovers())
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

    async def _clear_leftovers(self) -> None:
        """Working containers that stopped or failed builds left in their engines:
        buildah stopped while it sets up a RUN step exits without removing the
        container it just made. Removed once the run is over, when no build of
        it can be using them (by the parent each was made from, as after a crash)."""
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

    def _left_behind(self, member: Member, base_ref: str) -> None:
        self._leftovers.setdefault(member.name, (member, set()))[1].add(base_ref)

    # -- one layer -------------------------------------------------------

    def repository(self, layer: Layer) -> ImageRef:
        if self.config.registry is not None:
            return parse_repository(self.config.registry.repository(layer.image))
        return ImageRef(LOCAL_REGISTRY, layer.image)

    def lineage(self, layer_id: str) -> list[str]:
        return [layer_id, *graph.ancestors(self.parents, layer_id)]

    def expand_once(self, layer: Layer, text: str, what: str) -> str:
        """Upstream placeholders filled in, exactly once (``{{`` stays a literal ``{``)."""
        try:
            return expand(text, self._values)
        except TemplateError as exc:
            raise InputError(f"{layer.folder.name}/layer.toml", f"{what}: {exc}") from None

    def tags(self, layer: Layer) -> tuple[str, ...]:
        """The layer's tags, expanded and checked: an upstream value is data from
        outside (a git tag anyone can push) and must not smuggle anything in."""
        out = []
        for template in layer.tags:
            tag = self.expand_once(layer, template, "tags")
            problem = check_tag(tag)
            if problem:
                raise InputError(f"{layer.folder.name}/layer.toml",
                                 f"tags: {template!r} expands to {tag!r}, which is not a "
                                 f"valid tag: {problem}")
            out.append(tag)
        return tuple(out)

    def check_tags(self, order: list[str]) -> None:
        """Raise InputError for the first layer whose tags do not expand to valid
        tags: a one-shot run refuses before anything builds (the daemon instead
        fails that layer, with the reason)."""
        for lid in order:
            layer = self.catalog.layers[lid]
            if not self.upstreams_of(layer) & self.upstream_errors.keys():
                self.tags(layer)

    def upstreams_of(self, layer: Layer) -> set[str]:
        """upstreams_used, worked out once per layer for this run (asked again by
        every step and check)."""
        known = self._upstreams_of.get(layer.id)
        if known is None:
            known = self._upstreams_of[layer.id] = upstreams_used(layer)
        return known

    async def step(self, layer_id: str, parent: LayerResult | None) -> LayerResult:
        layer = self.catalog.layers[layer_id]
        for name in self.upstreams_of(layer):
            if name in self.upstream_errors:
                raise self.upstream_errors[name]
        repo = self.repository(layer)
        tags = self.tags(layer)
        display_ref = repo.tagged(tags[0]) if tags else repo.name
        parent_is_upstream = layer.upstream is not None
        base_ref, base_name, parent_digest = await self._parent(layer, parent)
        forced = layer_id in self.forced
        previous = self._records.get(layer_id)
        args = tuple((k, self.expand_once(layer, v, f"args.{k}")) for k, v in layer.args)

        if parent_digest is None:  # plan only: the parent would build first
            decision = decide(layer_id, None, None, image_found=False, forced=forced)
            return LayerResult(layer_id, decision, Outcome.BUILT, None, None, display_ref, None)

        context = await self._context(layer)
        bases, pins = await self._bases(layer, base_ref, context, args)
        inputs = self._inputs(layer, context, args, parent_digest, bases)
        key = build_key(inputs)
        found = None if forced else await self._lookup(repo, key)
        due = is_due(previous.built_at if previous else None, layer.rebuild_every_s, time.time())
        decision = decide(layer_id, inputs, previous.inputs if previous else None,
                          image_found=found is not None, forced=forced, due=due,
                          parent_is_upstream=parent_is_upstream)

        if not decision.build:
            assert found is not None
            return await self._reuse(layer, decision, inputs, key, repo, found, tags,
                                     display_ref, previous)
        if self.dry_run:
            return LayerResult(layer_id, decision, Outcome.BUILT, None, None, display_ref, key)
        if self.superseded(self.lineage(layer_id)):
            return LayerResult(layer_id, decision, Outcome.SUPERSEDED, None, None, display_ref,
                               key)
        assert base_ref is not None
        return await self._build(layer, decision, context, inputs, key, repo, base_ref,
                                 base_name, tags, display_ref, parent, pins)

    async def _reuse(self, layer: Layer, decision: Decision, inputs: Inputs, key: str,
                     repo: ImageRef, found: str, tags: tuple[str, ...], display_ref: str,
                     previous: LayerRecord | None) -> LayerResult:
        child_ref = self._child_ref(repo, found, repo.tagged(key_tag(key)))
        per_platform: Mapping[str, str] = {}
        if self.multi(layer):
            per_platform = previous.platform_digests if previous is not None and \
                previous.digest == found and previous.platform_digests else \
                await self._platform_digests(repo, found)
        if not self.dry_run:
            await self._point_tags(layer, repo, found, tags)
            if previous is None or previous.build_key != key:
                await self.state.save_layer(LayerRecord(
                    layer.id, key, found, child_ref, inputs,
                    previous.built_at if previous and previous.digest == found else time.time(),
                    per_platform))
        self.on_event("layer_up_to_date", {"layer": layer.id, "digest": found})
        return LayerResult(layer.id, decision, Outcome.REUSED, found, child_ref, display_ref,
                           key, platform_digests=per_platform)

    def multi(self, layer: Layer) -> bool:
        """Built per platform into an index (anything but this host's platform alone)."""
        return tuple(layer.platforms) != (self.host,) and bool(layer.platforms)

    async def _platform_digests(self, repo: ImageRef, digest: str) -> dict[str, str]:
        if self.resolver is None:
            return {}
        return await platform_manifests(self.resolver, repo, digest)

    async def _parent_platforms(self, layer: Layer, parent: LayerResult | None,
                                base_ref: str) -> dict[str, str]:
        """Each platform's parent manifest digest: what that platform is built FROM."""
        if parent is not None:
            found = dict(parent.platform_digests) or (
                {self.host: parent.digest} if parent.digest else {})
        elif layer.parent is not None:
            record = self._records.get(layer.parent)
            found = dict(record.platform_digests) if record and record.platform_digests \
                else ({self.host: record.digest} if record else {})
        else:  # an upstream: read its index (or its one platform) from the registry
            assert self.resolver is not None
            reference = parse_reference(base_ref)
            digest = reference.digest or ""
            found = await platform_manifests(self.resolver, reference.image, digest)
            if not found:
                found = {await image_platform(self.resolver, reference.image, digest): digest}
        missing = [p for p in layer.platforms if p not in found]
        if missing:
            where = layer.parent or f"upstream {layer.upstream}"
            raise BuildFailed(layer.id, None, f"{where} has no image for {', '.join(missing)} "
                              f"(it has: {', '.join(sorted(found)) or 'none'})", "")
        return found

    async def _context(self, layer: Layer) -> Context:
        known = self.contexts.get(layer.id)
        if known is None:  # not read up front: read it off the event loop
            known = await asyncio.to_thread(self._read, layer)
            self.contexts[layer.id] = known
        if isinstance(known, InputError):
            raise known
        return known

    def _read(self, layer: Layer) -> Context | InputError:
        try:
            return read_context(layer, self.engines)
        except InputError as exc:
            return exc

    async def _parent(self, layer: Layer,
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
            record = self._records.get(layer.parent)
            if record is None:
                raise BuildFailed(layer.id, None, f"parent {layer.parent} has never been "
                                  f"built: run `orchestrator build {layer.parent}`", "")
            return record.ref, record.ref, record.digest
        return parent.base_ref, parent.display_ref, parent.digest

    def _inputs(self, layer: Layer, context: Context, args: tuple[tuple[str, str], ...],
                parent_digest: str, bases: tuple[tuple[str, str], ...] = ()) -> Inputs:
        return Inputs(context.dockerfile, context.files, args, parent_digest, bases=bases,
                      platforms=layer.platforms, secrets=layer.secrets)

    async def _bases(self, layer: Layer, parent_ref: str | None, context: Context,
                     args: tuple[tuple[str, str], ...]
                     ) -> tuple[tuple[tuple[str, str], ...], dict[str, str]]:
        """Every image the Dockerfile names (but a ${BASE_IMAGE} parent), worked out
        as the engine will read it: with the build args it gets, upstream values
        filled in, for each platform built. Returns the digests of the bases other
        than the parent (for the key) and each one's pinned reference (for the
        engine)."""
        text = await asyncio.to_thread(_dockerfile_text, layer, context)
        # A ${BASE_IMAGE} stage is the parent, pinned by the arg itself: its
        # stages are left out of the bases whatever BASE_IMAGE holds.
        build_args = dict(args)
        found: dict[tuple[str, str, str], BaseUse] = {}
        for platform in layer.platforms or (self.host,):
            for use in build_bases(self.catalog, layer, text, build_args, platform=platform,
                                   build_platform=self.host, available=self.upstreams):
                found.setdefault((use.text, use.ref, use.role), use)
        digests: dict[str, str] = {}
        pins: dict[str, str] = {}
        for base in found.values():
            if base.role == "parent":
                if parent_ref is not None:
                    pins[base.text] = parent_ref
                continue
            if base.role == "upstream":
                assert base.upstream is not None
                up = self.upstreams[base.upstream]  # step() raised if it was not resolved
                digests[base.ref], pins[base.text] = up.digest, up.ref
                continue
            digest = await self._external(base.ref)
            digests[base.ref] = digest
            pins[base.text] = f"{parse_reference(base.ref).name}@{digest}"
        return tuple(sorted(digests.items())), pins

    async def _external(self, ref: str) -> str:
        """An unwatched base's digest, asked once per run (it is in the key)."""
        if ref not in self._externals:
            self._externals[ref] = asyncio.ensure_future(self._resolve_external(ref))
        return await asyncio.shield(self._externals[ref])

    async def _resolve_external(self, ref: str) -> str:
        if self.resolver is None:
            raise InputError("", f"cannot resolve {ref}: no registry client")
        reference = parse_reference(ref)
        digest = await self.resolver.manifest_digest(
            reference.image, reference.digest or reference.effective_tag or "latest")
        if digest is None:
            raise InputError("", f"base image {ref} not found in its registry")
        return digest

    async def _lookup(self, repo: ImageRef, key: str) -> str | None:
        if self.registry is not None and self.config.registry is not None:
            return await self.registry.manifest_digest(repo, key_tag(key))
        return await self.local.local_digest(repo.tagged(key_tag(key)))

    async def _point_tags(self, layer: Layer, repo: ImageRef, digest: str,
                          tags: tuple[str, ...]) -> None:
        """A reused image gets the layer's tags back: after a revert, ``app:1.0``
        must name the image built from the source as it is now."""
        if self.registry is None:
            return  # a local store: the key tag is what children use
        for tag in tags:
            if await self.registry.retag(repo, digest, tag):
                self.on_event("tag_moved", {"layer": layer.id, "tag": tag, "digest": digest})

    def _child_ref(self, repo: ImageRef, digest: str, key_ref: str) -> str:
        if self.config.registry is not None:
            return repo.at(digest)
        return self.local.base_reference(repo.name, digest, key_ref)

    def _labels(self, layer: Layer, key: str, tags: tuple[str, ...], base_name: str,
                base_digest: str, created: float, revision: str | None) -> dict[str, str]:
        oci = "org.opencontainers.image"
        labels = {
            f"{oci}.title": layer.image,
            # The time this key was first built: meaningful, and the same on every
            # rebuild of the same inputs, so it cannot make two such images differ.
            f"{oci}.created": iso(created),
            f"{oci}.source": self.config.build.source or _folder_uri(layer.folder),
            # Always set: labels are inherited, so a layer without tags would
            # otherwise show its parent's version.
            f"{oci}.version": tags[0] if tags else key_tag(key)[:15],
            f"{oci}.base.name": base_name,
            f"{oci}.base.digest": base_digest,
            f"{self.config.build.label_prefix}.build-key": key,
            f"{self.config.build.label_prefix}.layer": layer.id,
        }
        if revision:
            labels[f"{oci}.revision"] = revision
        return labels

    async def _build(self, layer: Layer, decision: Decision, context: Context, inputs: Inputs,
                     key: str, repo: ImageRef, base_ref: str, base_name: str,
                     tags: tuple[str, ...],
                     display_ref: str, parent: LayerResult | None,
                     pins: dict[str, str]) -> LayerResult:
        """Build on a pooled engine; if the engine (not the build) fails, once more
        on another one."""
        tried: list[str] = []
        while True:
            async with self.slots, self.pool.lease(
                    prefer=parent.builder if parent else None, exclude=tried) as member:
                if self.superseded(self.lineage(layer.id)):  # a change arrived meanwhile
                    return LayerResult(layer.id, decision, Outcome.SUPERSEDED, None, None,
                                       display_ref, key)
                try:
                    return await self._build_on(member, layer, decision, context, inputs, key,
                                                repo, base_ref, base_name, tags, display_ref,
                                                parent, pins)
                except BuildFailed:
                    engine_lost = len(self.pool) > 1 and not tried and \
                        not await self.pool.check(member)
                    if not engine_lost:
                        raise
                    tried.append(member.name)
                    self.on_event("build_retried", {"layer": layer.id, "builder": member.name,
                                                    "reason": "builder stopped answering"})

    async def _build_on(self, member: Member, layer: Layer, decision: Decision,
                        context: Context, inputs: Inputs, key: str, repo: ImageRef,
                        base_ref: str,
                        base_name: str, tags: tuple[str, ...], display_ref: str,
                        parent: LayerResult | None, pins: dict[str, str]) -> LayerResult:
        build_id = os.urandom(6).hex()  # 48 random bits, as a uuid4's first 12 digits
        for attempt in range(SNAPSHOT_ATTEMPTS):
            try:
                async with self.snapshots.snapshot(layer, context, self.work_dir / build_id) \
                        as (snap_context, snap_dockerfile):
                    # The build's private folder: the snapshot's, wherever it went.
                    work = snap_dockerfile.parent
                    return await self._run_build(
                        member, build_id, work, snap_context, snap_dockerfile, layer, decision,
                        inputs, key, repo, base_ref, base_name, tags, display_ref, parent, pins)
            except ContextChanged as exc:
                if attempt == SNAPSHOT_ATTEMPTS - 1:
                    raise BuildFailed(layer.id, None, str(exc), "") from exc
                self.on_event("context_changed", {"layer": layer.id, "path": exc.path})
                # Read it again; the key follows the content the engine will get.
                fresh = await asyncio.to_thread(self._read, layer)
                self.contexts[layer.id] = fresh
                if isinstance(fresh, InputError):
                    raise fresh from exc
                # A changed Dockerfile may name other images: pins and key follow it.
                bases, pins = await self._bases(layer, base_ref, fresh, inputs.args)
                context = fresh
                inputs = self._inputs(layer, context, inputs.args, inputs.parent_digest, bases)
                key = build_key(inputs)
                found = await self._lookup(repo, key)
                if found is not None and layer.id not in self.forced:
                    previous = await self.state.layer(layer.id)
                    return await self._reuse(layer, decision, inputs, key, repo,
                                             found, tags, display_ref, previous)
        raise AssertionError("unreachable")

    async def _prune(self, member: Member, layer: Layer, repo: ImageRef, digest: str) -> None:
        """The engine's local store keeps the newest ``[build] keep_local`` images of
        this layer (its step cache) and drops older ones: it must not grow forever."""
        try:
            removed = await member.builder.prune_local(
                repo.name, f"{self.config.build.label_prefix}.layer={layer.id}",
                self.config.build.keep_local, {digest})
        except Exception as exc:  # housekeeping: never a reason to fail a build
            self.on_event("local_prune_failed", {"layer": layer.id, "builder": member.name,
                                                 "error": str(exc)})
            return
        if removed:
            self.on_event("local_images_removed", {"layer": layer.id, "builder": member.name,
                                                   "removed": removed})

    def _cache_repo(self) -> str | None:
        """``[registry] cache``: a full repository name (relative names go under the
        registry url)."""
        registry = self.config.registry
        if registry is None or registry.cache is None:
            return None
        first = registry.cache.split("/", 1)[0]
        if "." in first or ":" in first or first == "localhost":
            return registry.cache
        return registry.repository(registry.cache)

    def _secrets(self, layer: Layer, work: Path) -> dict[str, Path]:
        """Each secret as a file the engine mounts: the configured file, or the
        environment variable's value written into this build's private folder
        (0600, removed with it). Values are never logged, hashed or stored."""
        out: dict[str, Path] = {}
        for name in layer.secrets:
            spec = self.config.secrets[name]
            if spec.file is not None:
                if not os.access(spec.file, os.R_OK):
                    raise BuildFailed(layer.id, None, f"secret {name}: {spec.file} cannot be "
                                      "read", "")
                out[name] = spec.file
                continue
            assert spec.env is not None
            value = os.environ.get(spec.env)
            if value is None:
                raise BuildFailed(layer.id, None, f"secret {name}: ${spec.env} is not set in "
                                  "the orchestrator's environment", "")
            folder = work / "secrets"
            folder.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
            out[name] = folder / name
        return out

    async def _attest(self, member: Member, layer: Layer, decision: Decision, inputs: Inputs,
                      repo: ImageRef, digest: str, base_ref: str, tags: tuple[str, ...],
                      parent: LayerResult | None, build_id: str, cause: str | None,
                      started: float, finished: float, work: Path, platform: str,
                      parent_digest: str) -> None:
        """Provenance and SBOM for the image just pushed. A failure here is reported
        and does not undo the build: the image is complete; it lacks its papers."""
        from orchestrator.core import provenance as prov

        assert self.attestor is not None
        if layer.upstream is not None:
            spec, up = self.catalog.upstreams[layer.upstream], self.upstreams[layer.upstream]
            parent_image = prov.ParentImage(spec.image or up.ref.split("@")[0], parent_digest,
                                            up.tag)
        else:
            tag = parse_reference(parent.display_ref).tag if parent else None
            parent_image = prov.ParentImage(base_ref.split("@")[0], parent_digest, tag)
        upstreams: list[prov.Upstream] = []
        for name in sorted(upstreams_used(layer)):
            spec, up = self.catalog.upstreams[name], self.upstreams[name]
            if spec.kind == "git":
                upstreams.append(prov.GitUpstream(name, spec.git or up.ref, up.digest, up.tag))
            else:
                upstreams.append(prov.RegistryUpstream(name, spec.image or up.ref, up.digest,
                                                       up.tag))
        facts = prov.BuildFacts(
            subject=prov.ImageSubject(repo.name, digest), layer=layer.id,
            dockerfile_path=display(layer.dockerfile), dockerfile_sha256=inputs.dockerfile,
            context_digest="sha256:" + context_digest(inputs.files),
            build_args=dict(inputs.args), platform=platform,
            builder=prov.Builder(member.spec.backend,
                                 getattr(member.builder, "version", None) or "unknown"),
            orchestrator_version=__version__, build_id=build_id, started=started,
            finished=finished, cause=cause or decision.describe(),
            parent=parent_image, upstreams=upstreams, reason=decision.describe(),
            parent_build_id=parent.build_id if parent else None, build_key=build_key(inputs))
        try:
            found = await self.attestor.attest(repo, digest, facts, tags[0] if tags else None,
                                               work)
        except Exception as exc:
            self.on_event("attestation_failed", {"layer": layer.id, "build_id": build_id,
                                                 "error": f"{type(exc).__name__}: {exc}"})
            return
        self.on_event("attested", {"layer": layer.id, "build_id": build_id,
                                   "artifacts": found})

    async def _run_build(self, member: Member, build_id: str, work: Path, snap_context: Path,
                         snap_dockerfile: Path, layer: Layer, decision: Decision,
                         inputs: Inputs, key: str, repo: ImageRef, base_ref: str,
                         base_name: str, tags: tuple[str, ...], display_ref: str,
                         parent: LayerResult | None, pins: dict[str, str]) -> LayerResult:
        key_ref = repo.tagged(key_tag(key))
        log_path = self.log_dir / f"{build_id}.log"
        secrets = self._secrets(layer, work)  # a missing secret fails before anything starts
        cause, request_id = self.cause_of(layer.id)
        if parent is not None and parent.build_id is not None:  # the chain to the parent
            cause = f"{cause}; parent build {parent.build_id}" if cause else \
                f"parent build {parent.build_id}"
        revision = await self.revision()  # before the build is recorded: it can wait
        # One transaction: the build is recorded as running (what crash recovery
        # needs) and the key's first-built time, which its images carry, is read.
        created = await self.state.start_keyed_build(
            build_id, layer.id, key, decision.describe(), str(log_path),
            float(int(time.time())), cause=cause, request_id=request_id, builder=member.name,
            base_ref=base_ref)
        labels = self._labels(layer, key, tags, base_name, inputs.parent_digest, created,
                              revision)
        request = BuildRequest(
            layer=layer.id,
            context=snap_context,
            dockerfile=snap_dockerfile,
            # A literal parent comes through its named context; BASE_IMAGE only
            # where the Dockerfile takes it that way.
            args={**({"BASE_IMAGE": base_ref} if layer.parent_by_arg else {}),
                  **dict(inputs.args)},
            labels=labels,
            tags=(*(repo.tagged(t) for t in tags if t != key_tag(key)), key_ref),
            push=self.config.registry is not None,
            log_path=log_path,
            timeout_s=self.config.build.timeout_s,
            no_cache=decision.reason in (Reason.FORCED, Reason.SCHEDULED),
            timestamp=int(created),
            work_dir=work,
            from_pins=pins,
            secrets=secrets,
            cache_repo=self._cache_repo(),
            cache_tag=_NOT_IN_TAGS.sub("-", layer.id),
        )
        task = asyncio.current_task()
        assert task is not None
        self.running[build_id] = (layer.id, task)
        started = time.time()
        bound = {"layer": layer.id, "build_id": build_id, "builder": member.name,
                 "platforms": list(layer.platforms)}
        self.on_event("build_started", {**bound, "reason": decision.describe(),
                                        "trigger": cause, "log": str(log_path)})
        per_platform: dict[str, str] = {}
        parents: dict[str, str] = {self.host: inputs.parent_digest}
        try:
            if self.multi(layer):
                parents = await self._parent_platforms(layer, parent, base_ref)
                per_platform = await self._build_platforms(member, request, layer, key, repo,
                                                           base_ref, parents, labels, pins)
                index_labels = {k: v for k, v in labels.items()
                                if k.startswith(("org.opencontainers.image.",
                                                 self.config.build.label_prefix))}
                assert self.registry is not None
                digest = await push_index(self.registry, repo, per_platform, index_labels,
                                          [ref.rsplit(":", 1)[1] for ref in request.tags])
                output = BuildOutput(digest)
            else:
                output = await member.builder.build(request)
        except asyncio.CancelledError:
            self._left_behind(member, base_ref)
            await asyncio.shield(self.state.finish_build(build_id, Outcome.CANCELLED.value))
            self.on_event("build_finished", {**bound, "outcome": "cancelled",
                                             "duration_s": round(time.time() - started, 3)})
            raise
        except BuildFailed as exc:
            self._left_behind(member, base_ref)  # a timeout stops the engine mid-step too
            first = first_error_line(exc.log_tail)
            await self.state.finish_build(build_id, Outcome.FAILED.value,
                                          error=f"{first}\n{exc}" if first else str(exc))
            self.on_event("build_finished", {**bound, "outcome": "failed",
                                             "duration_s": round(time.time() - started, 3),
                                             "error": first or str(exc), "trigger": cause,
                                             "log": str(log_path)})
            raise
        finally:
            self.running.pop(build_id, None)
        finished = time.time()
        child_ref = self._child_ref(repo, output.digest, key_ref)
        if self.attestor is not None and self.config.registry is not None:
            # The SBOM reads the image's layers back: on disk, never in the
            # build's folder, which may be on a tmpfs (small contexts).
            papers = self.work_dir / f"{build_id}.attest"
            try:
                # Papers per image: each platform's manifest, or the one image.
                for platform, digest in (per_platform or {self.host: output.digest}).items():
                    await self._attest(member, layer, decision, inputs, repo, digest,
                                       base_ref, tags, parent, build_id, cause, started,
                                       finished, papers, platform,
                                       parents.get(platform, inputs.parent_digest))
            finally:
                await asyncio.shield(asyncio.to_thread(remove_tree, papers))
        # One transaction: the build is done and the layer stands on its image.
        await self.state.finish_built(build_id, LayerRecord(
            layer.id, key, output.digest, child_ref, inputs, finished, per_platform))
        await self._prune(member, layer, repo, output.digest)
        self.on_event("build_finished", {**bound, "outcome": "built", "digest": output.digest,
                                         "image": repo.at(output.digest),
                                         "trigger": cause,
                                         "duration_s": round(finished - started, 3)})
        return LayerResult(layer.id, decision, Outcome.BUILT, output.digest, child_ref,
                           display_ref, key, build_id, str(log_path), started, finished,
                           member.name, per_platform)

    async def _build_platforms(self, member: Member, request: BuildRequest, layer: Layer,
                               key: str, repo: ImageRef, base_ref: str,
                               parents: dict[str, str], labels: dict[str, str],
                               pins: dict[str, str]) -> dict[str, str]:
        """One image per platform, each FROM its parent's image for that platform
        (``parents``); pushed under a per-platform key tag. Returns platform ->
        manifest digest."""
        parent_repo = base_ref.split("@", 1)[0]
        out: dict[str, str] = {}
        for platform in layer.platforms:
            base = f"{parent_repo}@{parents[platform]}"
            args = dict(request.args)
            if "BASE_IMAGE" in args:
                args["BASE_IMAGE"] = base
            per = replace(
                request, platform=platform, args=args,
                labels={**labels, "org.opencontainers.image.base.digest": parents[platform]},
                tags=(repo.tagged(f"{key_tag(key)}-{tag_suffix(platform)}"),),
                from_pins={text: base if ref == base_ref else ref
                           for text, ref in pins.items()},
                cache_tag=f"{request.cache_tag}-{tag_suffix(platform)}"
                if request.cache_tag else None)
            self.on_event("platform_build_started", {"layer": layer.id, "platform": platform,
                                                     "base": base})
            out[platform] = (await member.builder.build(per)).digest
        return out
