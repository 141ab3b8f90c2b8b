"""How a layer's images are named and labelled: repository, tags, labels, the
references children stand on. No I/O."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.core.buildkey import key_tag
from orchestrator.core.errors import InputError, TemplateError
from orchestrator.core.imageref import ImageRef, check_tag, parse_repository
from orchestrator.core.model import Config, Layer, ResolvedUpstream
from orchestrator.core.platforms import tag_suffix
from orchestrator.core.redact import redact_text
from orchestrator.core.templates import expand, upstream_values
from orchestrator.engines.base import Builder

LOCAL_REGISTRY = "localhost"
_NOT_IN_TAGS = re.compile(r"[^A-Za-z0-9_.-]")
# What a file:// URI keeps unquoted (RFC 3986 unreserved, and the slashes).
_URI_PLAIN = re.compile(r"/[A-Za-z0-9_.~/-]*")


def folder_uri(folder: Path) -> str:
    """A layer folder as a file:// URI (quoted). Most paths need no quoting, and
    every build asks: those skip as_uri's encoding and quoting."""
    text = str(folder)
    return "file://" + text if _URI_PLAIN.fullmatch(text) else folder.as_uri()


@functools.lru_cache(maxsize=256)  # the builds of a run share a handful of seconds
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageNames:
    """One layer's names in this run."""

    repo: ImageRef
    tags: tuple[str, ...]  # the layer's own tags, expanded and checked

    @property
    def display_ref(self) -> str:
        return self.repo.tagged(self.tags[0]) if self.tags else self.repo.name

    def key_ref(self, key: str) -> str:
        return self.repo.tagged(key_tag(key))

    def platform_ref(self, key: str, platform: str) -> str:
        """One platform's image of a key (``bk-<key>-linux-amd64``): how an engine
        pushes an image before it is complete. Only the key tag, put after the
        attestations, says the build is done; a human tag only follows that."""
        return self.repo.tagged(f"{key_tag(key)}-{tag_suffix(platform)}")


class Naming:
    def __init__(self, config: Config, upstreams: Mapping[str, ResolvedUpstream],
                 local: Builder) -> None:
        self.config = config
        self.local = local  # without a registry, images live in one engine's store
        self.values: dict[str, str] = {}
        for up in upstreams.values():
            self.values.update(upstream_values(up.name, up.tag, up.digest,
                                               up.ref.removesuffix("@" + up.digest)))

    def repository(self, layer: Layer) -> ImageRef:
        if self.config.registry is not None:
            return parse_repository(self.config.registry.repository(layer.image))
        return ImageRef(LOCAL_REGISTRY, layer.image)

    def expand_once(self, layer: Layer, text: str, what: str) -> str:
        """Upstream placeholders filled in, exactly once (``{{`` stays a literal ``{``)."""
        try:
            return expand(text, self.values)
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

    def names(self, layer: Layer) -> ImageNames:
        return ImageNames(self.repository(layer), self.tags(layer))

    def args(self, layer: Layer) -> tuple[tuple[str, str], ...]:
        return tuple((k, self.expand_once(layer, v, f"args.{k}")) for k, v in layer.args)

    def child_ref(self, names: ImageNames, digest: str, key: str) -> str:
        """What a child's BASE_IMAGE names to stand on this image."""
        if self.config.registry is not None:
            return names.repo.at(digest)
        return self.local.base_reference(names.repo.name, digest, names.key_ref(key))

    def cache_repo(self) -> str | None:
        """``[registry] cache``: a full repository name (relative names go under the
        registry url)."""
        registry = self.config.registry
        if registry is None or registry.cache is None:
            return None
        first = registry.cache.split("/", 1)[0]
        if "." in first or ":" in first or first == "localhost":
            return registry.cache
        return registry.repository(registry.cache)

    @staticmethod
    def cache_tag(layer: Layer) -> str:
        return _NOT_IN_TAGS.sub("-", layer.id)

    def labels(self, layer: Layer, key: str, tags: tuple[str, ...], base_name: str,
               base_digest: str, created: float, revision: str | None) -> dict[str, str]:
        oci = "org.opencontainers.image"
        prefix = self.config.build.label_prefix
        labels = {
            f"{oci}.title": layer.image,
            # The time this key was first built: meaningful, and the same on every
            # rebuild of the same inputs, so it cannot make two such images differ.
            f"{oci}.created": iso(created),
            f"{oci}.source": self.config.build.source or folder_uri(layer.folder),
            # Always set: labels are inherited, so a layer without tags would
            # otherwise show its parent's version.
            f"{oci}.version": tags[0] if tags else key_tag(key)[:15],
            f"{oci}.base.name": base_name,
            f"{oci}.base.digest": base_digest,
            f"{prefix}.build-key": key,
            f"{prefix}.layer": layer.id,
        }
        if revision:
            labels[f"{oci}.revision"] = revision
        # Labels stay in the image: a source URL's user:token@ must not.
        return {name: redact_text(value) for name, value in labels.items()}
