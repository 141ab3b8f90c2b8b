"""BuildKit: through ``buildctl`` when an address is configured, else through a
Docker CLI with ``DOCKER_BUILDKIT=1`` (the daemon's embedded BuildKit)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from orchestrator.core.dockerfile import buildkit_context_name, pin
from orchestrator.core.errors import BackendError, BuildFailed
from orchestrator.core.model import BuildKitConfig
from orchestrator.engines.base import (
    BuildOutput,
    BuildRequest,
    docker_style_flags,
    raise_if_failed,
    scratch,
)
from orchestrator.engines.docker_api import DockerApi
from orchestrator.engines.runner import PING_TIMEOUT_S, CommandRunner, log_tail

_PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


class DockerBuildKitBuilder:
    """The classic ``docker build`` path with BuildKit switched on. Needs a CLI
    that still honours DOCKER_BUILDKIT without buildx (Debian's docker.io 20.10)."""

    def __init__(self, config: BuildKitConfig, runner: CommandRunner, *,
                 docker_config_dir: Path | None = None, name: str = "docker") -> None:
        self.name = name
        self.version: str | None = None
        self.config = config
        self.runner = runner
        self.docker_config_dir = docker_config_dir
        self.api = DockerApi(config.docker_host)

    def env(self) -> dict[str, str]:
        env = {"DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
        if self.config.docker_host:
            env["DOCKER_HOST"] = self.config.docker_host
        if self.docker_config_dir:
            env["DOCKER_CONFIG"] = str(self.docker_config_dir)
        return env

    def build_argv(self, req: BuildRequest, iidfile: Path,
                   dockerfile: Path | None = None) -> list[str]:
        argv = [self.config.docker, "build", "--progress=plain"]
        if req.no_cache:
            argv.append("--no-cache")
        elif req.cache_repo and req.cache_tag:
            # Docker 20.10 has no registry cache exporter: the cache rides inline in
            # the pushed image, which other engines then import from.
            argv += ["--build-arg", "BUILDKIT_INLINE_CACHE=1",
                     "--cache-from", f"{req.cache_repo}:{req.cache_tag}"]
        return argv + docker_style_flags(req, iidfile, dockerfile)

    @staticmethod
    def pinned_dockerfile(req: BuildRequest, folder: Path) -> Path | None:
        """Docker 20.10's CLI has no named build contexts and its engine forwards no
        context: options: it gets a copy of the Dockerfile whose FROM lines name
        the pinned references (the user's file is hashed and left alone)."""
        if not req.from_pins:
            return None
        # Bytes in and out: no newline translation, so every line stays where it was.
        text = req.dockerfile.read_bytes().decode("utf-8")
        copy = folder / "Dockerfile.pinned"
        copy.write_bytes(pin(text, req.from_pins, req.args, platform=req.platform).encode())
        # The engine looks for <Dockerfile>.dockerignore beside the file it is
        # given; as beside the snapshot's own Dockerfile, an empty one keeps it
        # from filtering the already-filtered context again.
        ignore = req.dockerfile.with_name(req.dockerfile.name + ".dockerignore")
        (folder / (copy.name + ".dockerignore")).write_bytes(
            ignore.read_bytes() if ignore.is_file() else b"")
        return copy

    async def build(self, request: BuildRequest) -> BuildOutput:
        with scratch(request) as tmp:
            iidfile = Path(tmp, "iid")
            dockerfile = self.pinned_dockerfile(request, Path(tmp))
            rc = await self.runner.run(self.build_argv(request, iidfile, dockerfile),
                                       log=request.log_path, env=self.env(),
                                       timeout_s=request.timeout_s)
            raise_if_failed(request, rc)
            image_id = iidfile.read_text().strip()
        if not request.push:
            return BuildOutput(image_id)
        digest = ""
        refs = list(request.tags)
        if request.cache_repo and request.cache_tag:
            cache_ref = f"{request.cache_repo}:{request.cache_tag}"
            rc = await self.runner.run([self.config.docker, "tag", request.tags[-1], cache_ref],
                                       log=request.log_path, env=self.env(), timeout_s=60)
            raise_if_failed(request, rc)
            refs.insert(len(refs) - 1, cache_ref)  # the key tag stays last
        for ref in refs:  # the key tag is last: it commits the build
            rc = await self.runner.run([self.config.docker, "push", ref], log=request.log_path,
                                       env=self.env(), timeout_s=request.timeout_s)
            raise_if_failed(request, rc)
        # The registry digest of what was pushed: the engine records it in RepoDigests.
        repository = request.tags[-1].rsplit(":", 1)[0]
        image = await self.api.inspect(request.tags[-1])
        for entry in (image or {}).get("RepoDigests") or []:
            name, _, found = str(entry).partition("@")
            if name == repository:
                digest = found
        if not digest:
            found_in_log = _PUSHED_DIGEST.findall(log_tail(request.log_path, 5))
            digest = found_in_log[-1] if found_in_log else ""
        if not digest:
            raise BuildFailed(request.layer, 0, "pushed, but the registry digest is unknown",
                              str(request.log_path))
        return BuildOutput(digest)

    async def local_digest(self, ref: str) -> str | None:
        image = await self.api.inspect(ref)
        return str(image["Id"]) if image and image.get("Id") else None

    def base_reference(self, repository: str, digest: str, key_tag_ref: str) -> str:
        # Docker's image store cannot name a never-pushed image by digest; the
        # build-key tag is immutable by construction, so it pins just as well.
        return key_tag_ref

    async def clean_up_after_crash(self, base_refs: set[str]) -> int:
        return 0  # BuildKit keeps no working containers: its session ended with the client

    async def prune_local(self, repository: str, label: str, keep: int,
                          protect: set[str]) -> int:
        images = [i for i in await self.api.images(label)
                  if any(str(name).startswith((f"{repository}:", f"{repository}@"))
                         for name in [*(i.get("RepoTags") or []),
                                      *(i.get("RepoDigests") or [])])]
        images.sort(key=lambda i: int(i.get("Created") or 0), reverse=True)
        removed = 0
        for image in images[keep:]:
            names = {*(image.get("RepoDigests") or []), str(image.get("Id"))}
            if any(n.split("@")[-1] in protect or n in protect for n in names):
                continue
            removed += await self.api.remove_image(str(image["Id"]))
        return removed

    async def ping(self) -> None:
        # The build needs the CLI; the health check is the engine API's.
        if shutil.which(self.config.docker) is None:
            raise BackendError(f"{self.config.docker} not found: install docker.io or set "
                               "[build.buildkit] docker")
        self.version = await self.api.version()


class BuildctlBuilder:
    """A standalone buildkitd (local, remote or on Kubernetes) through buildctl.
    BuildKit has no image store of its own here: a registry is required."""

    def __init__(self, config: BuildKitConfig, runner: CommandRunner, *,
                 docker_config_dir: Path | None = None,
                 insecure_hosts: Iterable[str] = (), name: str = "buildkit") -> None:
        self.name = name
        self.version: str | None = None
        assert config.addr is not None
        self.config = config
        self.runner = runner
        self.docker_config_dir = docker_config_dir
        self.insecure = set(insecure_hosts)

    def env(self) -> Mapping[str, str]:
        return {"DOCKER_CONFIG": str(self.docker_config_dir)} if self.docker_config_dir else {}

    def _client(self) -> list[str]:
        assert self.config.addr is not None
        argv = [self.config.buildctl, "--addr", self.config.addr]
        if self.config.tls is not None:
            ca, cert, key = self.config.tls
            argv += ["--tlscacert", ca, "--tlscert", cert, "--tlskey", key]
        return argv

    def build_argv(self, req: BuildRequest, metadata: Path) -> list[str]:
        argv = [*self._client(), "build",
                "--frontend", "dockerfile.v0",
                "--local", f"context={req.context}",
                "--local", f"dockerfile={req.dockerfile.parent}",
                "--opt", f"filename={req.dockerfile.name}"]
        if req.no_cache:
            argv.append("--no-cache")
        elif req.cache_repo and req.cache_tag:
            cache = f"type=registry,ref={req.cache_repo}:{req.cache_tag}"
            argv += ["--export-cache", cache + ",mode=max", "--import-cache", cache]
        # The frontend looks a named context up by the image's familiar name
        # (dockerui's NamedContext): "debian:bookworm", never docker.io/library/….
        contexts = {buildkit_context_name(ref): pinned for ref, pinned in req.from_pins.items()}
        for name, pinned in sorted(contexts.items()):
            argv += ["--opt", f"context:{name}=docker-image://{pinned}"]
        for name, value in req.args.items():
            argv += ["--opt", f"build-arg:{name}={value}"]
        for name, path in sorted(req.secrets.items()):
            argv += ["--secret", f"id={name},src={path}"]
        if req.platform:
            argv += ["--opt", f"platform={req.platform}"]
        for name, value in req.labels.items():
            argv += ["--opt", f"label:{name}={value}"]
        # The output's option list is CSV: several names go in one quoted field.
        output = f'type=image,"name={",".join(req.tags)}",push={str(req.push).lower()}'
        if any(t.split("/", 1)[0] in self.insecure for t in req.tags):
            output += ",registry.insecure=true"
        argv += ["--output", output, "--metadata-file", str(metadata), "--progress", "plain"]
        return argv

    async def build(self, request: BuildRequest) -> BuildOutput:
        with scratch(request) as tmp:
            metadata = Path(tmp, "metadata.json")
            rc = await self.runner.run(self.build_argv(request, metadata), log=request.log_path,
                                       env=self.env(), timeout_s=request.timeout_s)
            raise_if_failed(request, rc)
            try:
                data = json.loads(metadata.read_text())
            except (OSError, ValueError):
                data = {}
        digest = data.get("containerimage.digest")
        if not isinstance(digest, str):
            raise BuildFailed(request.layer, 0, "buildctl wrote no image digest",
                              str(request.log_path))
        return BuildOutput(digest)

    async def local_digest(self, ref: str) -> str | None:
        return None  # no local store: lookups go to the registry

    async def prune_local(self, repository: str, label: str, keep: int,
                          protect: set[str]) -> int:
        return 0  # buildkitd's cache is bounded by its own garbage collection

    def base_reference(self, repository: str, digest: str, key_tag_ref: str) -> str:
        return f"{repository}@{digest}"

    async def clean_up_after_crash(self, base_refs: set[str]) -> int:
        return 0  # BuildKit keeps no working containers: its session ended with the client

    async def ping(self) -> None:
        assert self.config.addr is not None
        if shutil.which(self.config.buildctl) is None:
            raise BackendError(f"{self.config.buildctl} not found: install BuildKit's client "
                               "or set [build.buildkit] buildctl")
        out = await self.runner.capture(
            [*self._client(), "debug", "workers"], env=self.env(), timeout_s=PING_TIMEOUT_S)
        if out.returncode != 0:
            raise BackendError(f"buildkitd at {self.config.addr} does not answer: "
                               f"{out.stderr.strip()}")
