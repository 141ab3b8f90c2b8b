"""Step 3 of a layer's build: publish. The engine pushed the image under one
platform's name only (``bk-<key>-<platform>``); now, in this order:

1. its attestations (provenance, SBOM), whose subject is the image's digest;
2. the key tag, which says "completely built" (found means reused);
3. the layer's human tags.

So a human tag never names an image whose build did not complete, and a key
tag never names one without its papers (unless making them failed: that is
reported and the image is still complete). A reused image gets its human tags
pointed back at it. Afterwards the engine's local store is pruned, off the
critical path: children do not wait for it.

Without a registry the engine tags its local store itself (no papers there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator import __version__
from orchestrator.build.attest import Ancestor, Attestor
from orchestrator.build.job import BuildJob, Built
from orchestrator.build.scope import upstreams_used
from orchestrator.build.snapshot import remove_tree
from orchestrator.catalog.tomlfile import display
from orchestrator.core.buildkey import context_digest, key_tag
from orchestrator.core.errors import OrchestratorError, PublishFailed
from orchestrator.core.imageref import parse_reference
from orchestrator.core.model import Catalog, Config, ResolvedUpstream
from orchestrator.engines.pool import Member
from orchestrator.registry.client import RegistryClient


class Publisher:
    def __init__(self, config: Config, catalog: Catalog, *,
                 registry: RegistryClient | None, attestor: Attestor | None,
                 upstreams: Mapping[str, ResolvedUpstream],
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.config = config
        self.catalog = catalog
        self.registry = registry if config.registry is not None else None
        self.attestor = attestor if self.registry is not None else None
        self.upstreams = upstreams
        self.on_event = on_event

    async def publish(self, job: BuildJob, built: Built) -> None:
        if self.registry is None:
            return
        if self.attestor is not None:
            with job.clock.step("attest"):
                await self._attest_all(job, built)
        _, key = job.ready
        with job.clock.step("tag"):
            try:
                await self.registry.retag(job.names.repo, built.digest, key_tag(key))
                await self._point(job, built.digest)
            except OrchestratorError as exc:
                raise PublishFailed(job.layer.id, built.digest, str(exc)) from exc

    async def reuse(self, job: BuildJob, digest: str) -> None:
        """A reused image gets the layer's tags back: after a revert, ``app:1.0``
        must name the image built from the source as it is now."""
        if self.registry is not None:
            await self._point(job, digest)

    async def _point(self, job: BuildJob, digest: str) -> None:
        assert self.registry is not None
        for tag in job.names.tags:
            if await self.registry.retag(job.names.repo, digest, tag):
                self.on_event("tag_moved", {"layer": job.layer.id, "tag": tag,
                                            "digest": digest})

    async def prune(self, member: Member, job: BuildJob, digest: str) -> None:
        """The engine's local store keeps the newest ``[build] keep_local`` images of
        this layer (its step cache) and drops older ones: it must not grow forever."""
        try:
            removed = await member.builder.prune_local(
                job.names.repo.name, f"{self.config.build.label_prefix}.layer={job.layer.id}",
                self.config.build.keep_local, {digest})
        except Exception as exc:  # housekeeping: never a reason to fail a build
            self.on_event("local_prune_failed", {"layer": job.layer.id, "builder": member.name,
                                                 "error": str(exc)})
            return
        if removed:
            self.on_event("local_images_removed", {"layer": job.layer.id,
                                                   "builder": member.name, "removed": removed})

    async def _attest_all(self, job: BuildJob, built: Built) -> None:
        """Papers per image: each platform's manifest, or the one image. The SBOM
        reads the image's layers back: on disk, never in the build's folder,
        which may be on a tmpfs (small contexts)."""
        papers = self.config.state_dir / "builds" / f"{job.build_id}.attest"
        try:
            for platform, digest in built.images.items():
                await self._attest(job, digest, platform, built.parents[platform], papers)
        finally:
            await asyncio.shield(asyncio.to_thread(remove_tree, papers))

    async def _attest(self, job: BuildJob, digest: str, platform: str, parent_digest: str,
                      papers: Any) -> None:
        """Provenance and SBOM for one image. A failure here is reported and does
        not undo the build: the image is complete; it lacks its papers."""
        from orchestrator.core import provenance as prov

        assert self.attestor is not None
        layer, parent = job.layer, job.parent
        inputs, key = job.ready
        base_ref = job.base.ref or ""
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
        member = job.engine
        facts = prov.BuildFacts(
            subject=prov.ImageSubject(job.names.repo.name, digest), layer=layer.id,
            dockerfile_path=display(layer.dockerfile), dockerfile_sha256=inputs.dockerfile,
            context_digest="sha256:" + context_digest(inputs.files),
            build_args=dict(inputs.args), platform=platform,
            builder=prov.Builder(member.spec.backend,
                                 getattr(member.builder, "version", None) or "unknown"),
            orchestrator_version=__version__, build_id=job.build_id, started=job.started,
            finished=job.finished, cause=job.cause or job.decision.describe(),
            parent=parent_image, upstreams=upstreams, reason=job.decision.describe(),
            parent_build_id=parent.build_id if parent else None, build_key=key,
            package_indexes=job.fix_indexes)
        # Packages below are attributed to the parent (layer or upstream) as a whole.
        owner = layer.parent or (f"upstream:{layer.upstream}" if layer.upstream
                                 else parent_image.repository)
        try:
            found = await self.attestor.attest(
                job.names.repo, digest, facts, job.names.tags[0] if job.names.tags else None,
                papers, [Ancestor(owner, parent_image.repository, parent_digest)])
        except Exception as exc:
            self.on_event("attestation_failed", {"layer": layer.id, "build_id": job.build_id,
                                                 "error": f"{type(exc).__name__}: {exc}"})
            return
        self.on_event("attested", {"layer": layer.id, "build_id": job.build_id,
                                   "artifacts": found})
