"""Step 1 of a layer's build: decide. What the layer stands on, what goes into its
key, whether an image under that key exists, and so whether it builds and why.

Reads only: the registry (or the local store) for keys and external bases, the
layer's context (read once per run, up front), and the layer records as the run
began. Writes nothing, so a plan is this step alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from orchestrator.build.job import Base, BuildJob
from orchestrator.build.naming import Naming
from orchestrator.build.results import LayerResult
from orchestrator.build.scope import upstreams_used
from orchestrator.build.state import LayerRecord
from orchestrator.catalog.context import Context, read_context
from orchestrator.catalog.layers import host_platform
from orchestrator.catalog.parents import build_bases
from orchestrator.catalog.tomlfile import display
from orchestrator.core.buildkey import build_key, key_tag
from orchestrator.core.errors import BuildFailed, InputError
from orchestrator.core.imageref import ImageRef, parse_reference
from orchestrator.core.model import (
    BaseUse,
    Catalog,
    Config,
    Inputs,
    Layer,
    Reason,
    ResolvedUpstream,
)
from orchestrator.core.packagefix import Fix, describe, key_pins
from orchestrator.core.plan import decide, is_due
from orchestrator.engines.base import Builder
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.index import image_platform, platform_manifests

if TYPE_CHECKING:
    from orchestrator.build.packagefixes import FixView


def _dockerfile_text(layer: Layer, context: Context) -> str:
    """The Dockerfile whose digest the key holds (read again: a context keeps its
    digest, not its text)."""
    try:
        data = layer.dockerfile.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(display(layer.dockerfile), f"cannot read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != context.dockerfile:
        raise BuildFailed(layer.id, None, f"{display(layer.dockerfile)} changed while this run "
                          "read it; the next run builds what it says now", "")
    return text


class Decider:
    def __init__(self, config: Config, catalog: Catalog, naming: Naming, *,
                 upstreams: Mapping[str, ResolvedUpstream],
                 upstream_errors: Mapping[str, Exception],
                 registry: RegistryClient | None, resolver: RegistryClient | None,
                 local: Builder, engines: tuple[str, ...],
                 contexts: dict[str, Context | InputError],
                 records: Mapping[str, LayerRecord], forced: frozenset[str],
                 packages: FixView | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.naming = naming
        self.upstreams = upstreams
        self.upstream_errors = upstream_errors
        self.registry = registry  # where keys are looked up (None: the local store)
        # For images a Dockerfile names that nothing watches: looked up once a run.
        self.resolver = resolver or registry
        self.local = local
        self.engines = engines
        self.contexts = contexts
        # Each layer's record as the run began: a layer's own record is written
        # only by its own step, after it was read.
        self.records = records
        self.forced = forced
        self.packages = packages  # the package fixes each layer has now (package watch)
        self.host = host_platform()
        self._externals: dict[str, asyncio.Future[str]] = {}
        self._upstreams_of: dict[str, set[str]] = {}

    def upstreams_of(self, layer: Layer) -> set[str]:
        """upstreams_used, worked out once per layer for this run."""
        known = self._upstreams_of.get(layer.id)
        if known is None:
            known = self._upstreams_of[layer.id] = upstreams_used(layer)
        return known

    def check_tags(self, order: list[str]) -> None:
        """Raise InputError for the first layer whose tags do not expand to valid
        tags: a one-shot run refuses before anything builds (the daemon instead
        fails that layer, with the reason)."""
        for lid in order:
            layer = self.catalog.layers[lid]
            if not self.upstreams_of(layer) & self.upstream_errors.keys():
                self.naming.tags(layer)

    async def decide(self, layer_id: str, parent: LayerResult | None) -> BuildJob:
        layer = self.catalog.layers[layer_id]
        for name in self.upstreams_of(layer):
            if name in self.upstream_errors:
                raise self.upstream_errors[name]
        names = self.naming.names(layer)
        base = self._base(layer, parent)
        forced = layer_id in self.forced
        previous = self.records.get(layer_id)
        args = self.naming.args(layer)
        if base.digest is None:  # plan only: the parent would build first
            return BuildJob(layer, names, base, parent, previous,
                            decide(layer_id, None, None, image_found=False, forced=forced))
        context = await self.context(layer)
        bases, pins = await self._bases(layer, base.ref, context, args)
        inputs = Inputs(context.dockerfile, context.files, args, base.digest, bases=bases,
                        platforms=layer.platforms, secrets=layer.secrets)
        due = is_due(previous.built_at if previous else None, layer.rebuild_every_s, time.time())
        inputs, fixes = self._with_packages(layer_id, inputs, previous, anyway=forced or due)
        key = build_key(inputs)
        found = None if forced else await self.lookup(names.repo, key)
        decision = decide(layer_id, inputs, previous.inputs if previous else None,
                          image_found=found is not None, forced=forced, due=due,
                          parent_is_upstream=layer.upstream is not None)
        if decision.reason is Reason.PACKAGE_FIX and fixes:
            decision = replace(decision, detail=describe(fixes))
        job = BuildJob(layer, names, base, parent, previous, decision, context, inputs, key,
                       pins, found)
        if decision.build and fixes and self.packages is not None:
            job.fixes, job.fix_indexes = fixes, tuple(self.packages.indexes(fixes))
        return job

    def _with_packages(self, layer_id: str, inputs: Inputs, previous: LayerRecord | None,
                       *, anyway: bool = False) -> tuple[Inputs, tuple[Fix, ...]]:
        """The key's package pins (``core.packagefix.key_pins``), and the fixes a build
        under them takes in. Pins stay while the other inputs do, so a fix that was
        built against keeps its key whether or not the image got it. ``anyway``: the
        layer rebuilds whatever its key (forced, scheduled); its apt-get runs again,
        so it takes its pending fixes along even in their window, and the new content
        gets a new key."""
        before = previous.inputs.packages if previous is not None else ()
        # By key, not by value: what the key does not tell apart is the same input.
        changed = previous is None or \
            build_key(replace(previous.inputs, packages=())) != build_key(inputs)
        view = self.packages
        found = view.report.fixes.get(layer_id, ()) if view is not None else ()
        pins = key_pins(before, found, other_inputs_changed=changed)
        if changed or view is None:
            return replace(inputs, packages=pins), found
        if not view.takes(layer_id) and not anyway:  # its window is open: the fixes wait
            return replace(inputs, packages=before), ()
        # A fix a build did not take, tried again against a changed index (retry_pin).
        pins = tuple(sorted({**dict(pins), **dict(view.retries.get(layer_id, ()))}.items()))
        return replace(inputs, packages=pins), view.pending(layer_id, before)

    async def refresh(self, job: BuildJob) -> None:
        """The context changed under a snapshot: read it again and key the job on
        the content the engine will now get (``job.found`` says if that key exists)."""
        layer = job.layer
        fresh = await asyncio.to_thread(self._read, layer)
        self.contexts[layer.id] = fresh
        if isinstance(fresh, InputError):
            raise fresh
        inputs, _ = job.ready
        job.context = fresh
        # A changed Dockerfile may name other images: pins and key follow it.
        bases, job.pins = await self._bases(layer, job.base.ref, fresh, inputs.args)
        job.inputs = Inputs(fresh.dockerfile, fresh.files, inputs.args, inputs.parent_digest,
                            bases=bases, platforms=layer.platforms,
                            secrets=layer.secrets, packages=inputs.packages)
        job.key = build_key(job.inputs)
        job.found = None if layer.id in self.forced else \
            await self.lookup(job.names.repo, job.key)

    async def context(self, layer: Layer) -> Context:
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

    def _base(self, layer: Layer, parent: LayerResult | None) -> Base:
        if layer.upstream is not None:  # resolved: decide() raised already if it was not
            up = self.upstreams[layer.upstream]
            spec = self.catalog.upstreams[layer.upstream]
            name = f"{spec.image}:{up.tag}" if spec.image else f"{spec.git}#{up.tag}"
            return Base(up.ref, name, up.digest)
        if parent is None:
            # The parent is outside this run: stand on its last recorded image.
            assert layer.parent is not None
            record = self.records.get(layer.parent)
            if record is None:
                raise BuildFailed(layer.id, None, f"parent {layer.parent} has never been "
                                  f"built: run `orchestrator build {layer.parent}`", "")
            return Base(record.ref, record.ref, record.digest)
        return Base(parent.base_ref, parent.display_ref, parent.digest)

    async def _bases(self, layer: Layer, parent_ref: str | None, context: Context,
                     args: tuple[tuple[str, str], ...]
                     ) -> tuple[tuple[tuple[str, str], ...], dict[str, str]]:
        """Every image the Dockerfile names (but a ${BASE_IMAGE} parent), worked out
        as the engine will read it: with the build args it gets, upstream values
        filled in, for each platform built. Returns the digests of the bases other
        than the parent (for the key) and each one's pinned reference (for the
        engine)."""
        text = await asyncio.to_thread(_dockerfile_text, layer, context)
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
                up = self.upstreams[base.upstream]  # decide() raised if it was not resolved
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

    async def lookup(self, repo: ImageRef, key: str) -> str | None:
        """The digest under the key: the registry's, or the local store's."""
        if self.registry is not None and self.config.registry is not None:
            return await self.registry.manifest_digest(repo, key_tag(key))
        return await self.local.local_digest(repo.tagged(key_tag(key)))

    async def platform_digests(self, repo: ImageRef, digest: str) -> dict[str, str]:
        if self.resolver is None:
            return {}
        return await platform_manifests(self.resolver, repo, digest)

    async def parent_platforms(self, job: BuildJob) -> dict[str, str]:
        """Each platform's parent manifest digest: what that platform is built FROM."""
        layer, parent = job.layer, job.parent
        if parent is not None:
            found = dict(parent.platform_digests) or (
                {self.host: parent.digest} if parent.digest else {})
        elif layer.parent is not None:
            record = self.records.get(layer.parent)
            found = dict(record.platform_digests) if record and record.platform_digests \
                else ({self.host: record.digest} if record else {})
        else:  # an upstream: read its index (or its one platform) from the registry
            assert self.resolver is not None and job.base.ref is not None
            reference = parse_reference(job.base.ref)
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
