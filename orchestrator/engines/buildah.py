"""Buildah: ``buildah bud`` with chroot isolation, then ``buildah push`` per tag."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.dockerfile import buildah_context_names
from orchestrator.core.errors import BackendError, BuildFailed
from orchestrator.core.imageref import is_loopback
from orchestrator.core.model import BuildahConfig
from orchestrator.engines.base import (
    BuildOutput,
    BuildRequest,
    docker_style_flags,
    raise_if_failed,
    scratch,
)
from orchestrator.engines.runner import PING_TIMEOUT_S, CommandRunner


def _host(ref: str) -> str:
    return ref.split("/", 1)[0]


class BuildahBuilder:
    def __init__(self, config: BuildahConfig, runner: CommandRunner, *,
                 authfile: Path | None = None, insecure_hosts: Iterable[str] = (),
                 name: str = "buildah") -> None:
        self.name = name
        self.version: str | None = None
        self.config = config
        self.runner = runner
        self.authfile = authfile
        self.insecure = set(insecure_hosts)

    def _global(self) -> list[str]:
        argv = [self.config.command]
        if self.config.root:
            argv += ["--root", self.config.root]
        if self.config.runroot:
            argv += ["--runroot", self.config.runroot]
        if self.config.storage_driver:
            argv += ["--storage-driver", self.config.storage_driver]
        return argv

    def _tls(self, ref: str) -> list[str]:
        host = _host(ref)
        plain = host in self.insecure or is_loopback(host)
        return ["--tls-verify=false"] if ref and plain else []

    def _auth(self) -> list[str]:
        return ["--authfile", str(self.authfile)] if self.authfile else []

    @staticmethod
    def build_contexts(req: BuildRequest) -> dict[str, str]:
        """The pins under the names buildah looks them up by: a FROM by its text as
        written (before ARG expansion), a --from by its value."""
        if not req.from_pins:
            return {}
        text = req.dockerfile.read_bytes().decode("utf-8")
        return buildah_context_names(text, req.from_pins, req.args, platform=req.platform)

    def build_argv(self, req: BuildRequest, iidfile: Path,
                   contexts: Mapping[str, str] | None = None) -> list[str]:
        # The parent is pinned by digest, so the default pull policy ("missing")
        # never fetches a moving tag.
        pulls = [req.args.get("BASE_IMAGE", ""), *req.from_pins.values(),
                 req.cache_repo or ""]
        insecure = any(self._tls(ref) for ref in pulls)
        argv = [*self._global(), "bud", "--isolation", self.config.isolation,
                *(["--tls-verify=false"] if insecure else []), *self._auth()]
        for name, pinned in sorted((req.from_pins if contexts is None else contexts).items()):
            argv += ["--build-context", f"{name}=docker-image://{pinned}"]
        if (self.config.layers or req.cache_repo) and not req.no_cache:
            # With --layers a failed step's working container is kept unless
            # --force-rm: one left behind per failed build, for ever.
            argv += ["--layers", "--force-rm"]
        if req.cache_repo and not req.no_cache:
            # Step layers go to (and come from) the shared cache repository.
            argv += ["--cache-to", req.cache_repo, "--cache-from", req.cache_repo]
        if req.timestamp is not None:
            # Fixes the created time and every file time in the new layers: the
            # same inputs give the same bytes, so the digest can stay the same.
            argv += ["--timestamp", str(req.timestamp)]
        return argv + docker_style_flags(req, iidfile)

    def push_argv(self, ref: str, digestfile: Path) -> list[str]:
        return [*self._global(), "push", *self._tls(ref), *self._auth(),
                "--digestfile", str(digestfile), ref]

    async def build(self, request: BuildRequest) -> BuildOutput:
        with scratch(request) as tmp:
            iidfile = Path(tmp, "iid")
            argv = self.build_argv(request, iidfile, self.build_contexts(request))
            rc = await self.runner.run(argv, log=request.log_path, timeout_s=request.timeout_s)
            raise_if_failed(request, rc)
            digest = await self._local_digest_or_fail(request)
            if not request.push:
                return BuildOutput(digest)
            for ref in request.tags:  # the key tag is last: it commits the build
                digestfile = Path(tmp, "digest")
                rc = await self.runner.run(self.push_argv(ref, digestfile), log=request.log_path,
                                           timeout_s=request.timeout_s)
                raise_if_failed(request, rc)
                digest = digestfile.read_text().strip() if digestfile.exists() else digest
            return BuildOutput(digest)

    async def _local_digest_or_fail(self, request: BuildRequest) -> str:
        digest = await self.local_digest(request.tags[-1])
        if digest is None:
            raise BuildFailed(request.layer, 0, "buildah reported success but the image is "
                              "missing from local storage", str(request.log_path))
        return digest

    async def local_digest(self, ref: str) -> str | None:
        out = await self.runner.capture([*self._global(), "images", "--json", ref])
        if out.returncode != 0:
            return None
        try:
            images = json.loads(out.stdout or "[]")
        except ValueError:
            return None
        for image in images:
            digest = image.get("digest")
            if isinstance(digest, str) and digest:
                return digest
        return None

    def base_reference(self, repository: str, digest: str, key_tag_ref: str) -> str:
        # Buildah finds local images by repository@digest.
        return f"{repository}@{digest}"

    async def clean_up_after_crash(self, base_refs: set[str]) -> int:
        # A dead ``bud`` leaves its working container. It was made from the
        # pinned parent the build recorded, or, when the first steps were cached,
        # from an unnamed step image whose layers start with the parent's. Those
        # are removed; a container made from any other image, or from a named
        # image other than the parent, is someone else's and stays.
        if not base_refs:
            return 0
        containers = await self._json([*self._global(), "containers", "--json"])
        builders = [c for c in containers if isinstance(c, dict) and c.get("builder")]
        if not builders:
            return 0
        parents: dict[str, list[str]] = {}  # image id -> its layer diff ids
        for ref in sorted(base_refs):
            if (found := await self._image_layers(ref)) is not None:
                parents[found[0]] = found[1]
        removed = 0
        for container in builders:
            image_id = str(container.get("imageid") or "")
            ours = container.get("imagename") in base_refs or image_id in parents
            if not ours and image_id and not container.get("imagename") and parents:
                found = await self._image_layers(image_id)
                ours = found is not None and any(
                    found[1][:len(layers)] == layers for layers in parents.values())
            if ours:
                rm = await self.runner.capture([*self._global(), "rm", str(container["id"])])
                removed += rm.returncode == 0
        return removed

    async def _json(self, argv: list[str]) -> list[Any]:
        out = await self.runner.capture(argv)
        if out.returncode != 0:
            return []
        try:
            value = json.loads(out.stdout or "[]")
        except ValueError:
            return []
        return value if isinstance(value, list) else [value]

    async def _image_layers(self, ref: str) -> tuple[str, list[str]] | None:
        """(image id, diff ids) of a local image, or None when it is not here."""
        out = await self.runner.capture([*self._global(), "inspect", "--type", "image", ref])
        if out.returncode != 0:
            return None
        try:
            info = json.loads(out.stdout)
            layers = info["OCIv1"]["rootfs"]["diff_ids"] or []
            return str(info["FromImageID"]), [str(layer) for layer in layers]
        except (ValueError, KeyError, TypeError):
            return None

    async def prune_local(self, repository: str, label: str, keep: int,
                          protect: set[str]) -> int:
        """Older images of one layer leave the local store (the newest ``keep`` stay:
        the next build's step cache stands on them). Only images named under
        ``repository`` and carrying ``label``: never anything else on the host."""
        # Listed by name, not by label: a label filter makes buildah read the
        # config of every image in the store (1.6 s with 1,600 images, on every
        # build), the name filter does not. The label is checked on the few
        # images that would go.
        out = await self.runner.capture([*self._global(), "images", "--json", "--filter",
                                         f"reference={repository}"])
        if out.returncode != 0:
            return 0
        try:
            images = json.loads(out.stdout or "[]") or []
        except ValueError:
            return 0
        mine = [i for i in images
                if any(str(n).startswith((f"{repository}:", f"{repository}@"))
                       for n in i.get("names") or [])]
        mine.sort(key=lambda i: int(i.get("created") or 0), reverse=True)
        removed = 0
        for image in mine[keep:]:
            if image.get("digest") in protect or any(
                    str(n).split("@")[-1] in protect for n in image.get("names") or []):
                continue
            if not await self._has_label(str(image["id"]), label):
                continue
            # Fails (and is left alone) when a running build's container uses it.
            rm = await self.runner.capture([*self._global(), "rmi", str(image["id"])])
            removed += rm.returncode == 0
        return removed

    async def _has_label(self, image_id: str, label: str) -> bool:
        """Whether a local image carries ``label`` (``key=value``)."""
        key, _, value = label.partition("=")
        # Whole: buildah 1.28's --format templates have no json function.
        out = await self.runner.capture([*self._global(), "inspect", "--type", "image",
                                         image_id])
        if out.returncode != 0:
            return False
        try:
            labels = json.loads(out.stdout)["OCIv1"]["config"].get("Labels") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        return isinstance(labels, dict) and labels.get(key) == value

    async def ping(self) -> None:
        if shutil.which(self.config.command) is None:
            raise BackendError(f"{self.config.command} not found on PATH: install buildah "
                               "or set [build.buildah] command")
        out = await self.runner.capture([*self._global(), "version"],
                                        timeout_s=PING_TIMEOUT_S)
        if out.returncode != 0:
            raise BackendError(f"buildah does not answer: {out.stderr.strip()}")
        for line in out.stdout.splitlines():
            if line.startswith("Version:"):
                self.version = line.split(":", 1)[1].strip()
