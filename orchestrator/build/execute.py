"""Step 2 of a layer's build: run. The engine builds the job's snapshot, per
platform when the layer has several (each FROM its parent's image for that
platform), and pushes it under one platform's name only; a multi-platform
image's index is pushed by digest. What publishes it as complete comes after
(``publish.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.build.decide import Decider
from orchestrator.build.job import BuildJob, Built
from orchestrator.build.naming import Naming
from orchestrator.core.errors import BuildFailed
from orchestrator.core.model import Config, Layer, Reason
from orchestrator.core.platforms import tag_suffix
from orchestrator.engines.base import BuildRequest
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.index import push_index


class Executor:
    def __init__(self, config: Config, naming: Naming, decider: Decider, *,
                 registry: RegistryClient | None,
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.config = config
        self.naming = naming
        self.decider = decider
        self.registry = registry
        self.on_event = on_event
        self.host = decider.host

    def multi(self, layer: Layer) -> bool:
        """Built per platform into an index (anything but this host's platform alone)."""
        return tuple(layer.platforms) != (self.host,) and bool(layer.platforms)

    def request(self, job: BuildJob, labels: dict[str, str], context: Path,
                dockerfile: Path, secrets: dict[str, Path]) -> BuildRequest:
        inputs, key = job.ready
        assert job.work is not None and job.log_path is not None and job.base.ref is not None
        layer, names = job.layer, job.names
        push = self.config.registry is not None
        if push:  # complete only once publish puts the key tag, after the papers
            tags: tuple[str, ...] = (names.platform_ref(key, self.host),)
        else:  # a local store: the engine's own tags, the key tag last
            tags = (*(names.repo.tagged(t) for t in names.tags), names.key_ref(key))
        return BuildRequest(
            layer=layer.id,
            context=context,
            dockerfile=dockerfile,
            # A literal parent comes through its named context; BASE_IMAGE only
            # where the Dockerfile takes it that way.
            args={**({"BASE_IMAGE": job.base.ref} if layer.parent_by_arg else {}),
                  **dict(inputs.args)},
            labels=labels,
            tags=tags,
            push=push,
            log_path=job.log_path,
            timeout_s=self.config.build.timeout_s,
            # A package fix must really run apt-get/apk again.
            no_cache=job.decision.reason in (Reason.FORCED, Reason.SCHEDULED,
                                             Reason.PACKAGE_FIX) or bool(job.fixes),
            timestamp=int(job.created),
            work_dir=job.work,
            from_pins=job.pins,
            secrets=secrets,
            cache_repo=self.naming.cache_repo(),
            cache_tag=self.naming.cache_tag(layer),
        )

    async def run(self, job: BuildJob, request: BuildRequest) -> Built:
        inputs, _ = job.ready
        builder = job.engine.builder
        if not self.multi(job.layer):
            with job.clock.step("run"):
                output = await builder.build(request)
            return Built(output.digest, {self.host: output.digest},
                         {self.host: inputs.parent_digest})
        parents = await self.decider.parent_platforms(job)
        images = await self._platforms(job, request, parents)
        labels = {k: v for k, v in request.labels.items()
                  if k.startswith(("org.opencontainers.image.", self.config.build.label_prefix))}
        assert self.registry is not None
        with job.clock.step("push"):
            # By digest: the key tag and the human tags come with publish.
            digest = await push_index(self.registry, job.names.repo, images, labels, [])
        return Built(digest, images, parents, multi=True)

    async def _platforms(self, job: BuildJob, request: BuildRequest,
                         parents: dict[str, str]) -> dict[str, str]:
        """One image per platform, each FROM its parent's image for that platform;
        pushed under its platform's key tag. Returns platform -> manifest digest."""
        _, key = job.ready
        base_ref = job.base.ref or ""
        parent_repo = base_ref.split("@", 1)[0]
        out: dict[str, str] = {}
        for platform in job.layer.platforms:
            base = f"{parent_repo}@{parents[platform]}"
            args = dict(request.args)
            if "BASE_IMAGE" in args:
                args["BASE_IMAGE"] = base
            per = replace(
                request, platform=platform, args=args,
                labels={**request.labels,
                        "org.opencontainers.image.base.digest": parents[platform]},
                tags=(job.names.platform_ref(key, platform),),
                from_pins={text: base if ref == base_ref else ref
                           for text, ref in request.from_pins.items()},
                cache_tag=f"{request.cache_tag}-{tag_suffix(platform)}"
                if request.cache_tag else None)
            self.on_event("platform_build_started", {"layer": job.layer.id,
                                                     "platform": platform, "base": base})
            with job.clock.step("run"):
                out[platform] = (await job.engine.builder.build(per)).digest
        return out

    def secrets(self, layer: Layer, work: Path) -> dict[str, Path]:
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
