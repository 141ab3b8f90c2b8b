"""Reading an image's papers back from the registry: the chain of provenance
statements down to the upstream it stands on, and its SBOM.

Nothing comes from local state, so it works on any host that can read the
registry. Each level is found by the digest the level above names as its
parent; the chain ends where an image carries no provenance (an upstream,
or an image built elsewhere). With a public key every statement on the way
must verify; a tampered or unsigned one fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from orchestrator.core import provenance
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.imageref import ImageRef, parse_reference, parse_repository
from orchestrator.core.platforms import from_machine
from orchestrator.registry.artifacts import Referrer, read_artifact, referrers
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.index import platform_manifests

SBOM_TYPE = "application/vnd.cyclonedx+json"
MAX_DEPTH = 64


class NotFound(OrchestratorError):
    """The image, or its provenance, is not in the registry (exit 1)."""


@dataclass
class Level:
    image: str  # repository@digest
    layer: str | None = None
    cause: str | None = None
    reason: str | None = None
    build_id: str | None = None
    started: str | None = None
    finished: str | None = None
    builder: str | None = None
    signature: str | None = None  # unsigned | signed | verified
    sbom: dict[str, Any] | None = None
    upstreams: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: bool = True
    # Package index snapshots the build was for (a package fix): suite, uri, digest,
    # date and the fixes they offered.
    packages: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _newest(found: list[Referrer]) -> Referrer | None:
    if not found:
        return None
    return max(found, key=lambda r: r.annotations.get("org.opencontainers.image.created", ""))


def host_platform_name() -> str:
    import os

    return from_machine(os.uname().machine)


async def resolve(client: RegistryClient, text: str,
                  platform: str | None = None) -> tuple[ImageRef, str]:
    """IMAGE[:TAG|@DIGEST] -> (repository, manifest digest); for an index, the
    manifest of ``platform`` (default: this host's)."""
    try:
        ref = parse_reference(text)
    except ValueError as exc:
        raise OrchestratorError(f"{text!r} is not an image reference: {exc}") from exc
    digest = ref.digest or await client.manifest_digest(ref.image,
                                                        ref.effective_tag or "latest")
    if digest is None:
        raise NotFound(f"{text}: no such image in its registry")
    # A multi-platform image: its papers are per platform; this host's, by default.
    platforms = await platform_manifests(client, ref.image, digest)
    if platforms:
        chosen = platform or host_platform_name()
        if chosen not in platforms:
            raise NotFound(f"{text}: no {chosen} image (it has: "
                           f"{', '.join(sorted(platforms))})")
        digest = platforms[chosen]
    return ref.image, digest


async def sbom_of(client: RegistryClient, repo: ImageRef, digest: str) -> bytes | None:
    found = _newest(await referrers(client, repo, digest, SBOM_TYPE))
    return await read_artifact(client, repo, found.digest) if found else None


async def level_of(client: RegistryClient, repo: ImageRef, digest: str,
                   key_pem: bytes | None) -> tuple[Level, provenance.ProvenanceSummary | None]:
    from orchestrator.core.dsse import open_document

    level = Level(f"{repo.name}@{digest}")
    found = _newest(await referrers(client, repo, digest, provenance.STATEMENT_MEDIA_TYPE))
    if found is None:
        level.provenance = False
        return level, None
    document = await read_artifact(client, repo, found.digest)
    opened = open_document(document, key_pem)  # SignatureError when it does not verify
    if key_pem is not None and opened.status != "verified":
        raise OrchestratorError(f"{level.image}: the provenance is unsigned, so it cannot be "
                                "verified with the key")
    summary = provenance.read_statement(opened.payload)
    level.layer, level.cause, level.reason = summary.layer, summary.cause, summary.reason
    level.build_id = summary.build_id
    level.started = summary.started.isoformat() if summary.started else None
    level.finished = summary.finished.isoformat() if summary.finished else None
    level.builder = ", ".join(f"{k} {v}" for k, v in summary.builder_versions.items())
    level.signature = opened.status
    level.upstreams = {name: {"uri": dep.uri, "digest": dict(dep.digest)}
                       for name, dep in summary.upstreams.items()}
    level.packages = [
        {"suite": dep.name.removeprefix(provenance.PACKAGES_PREFIX), "uri": dep.uri,
         "digest": dict(dep.digest), **dict(dep.annotations)}
        for dep in summary.dependencies if dep.name.startswith(provenance.PACKAGES_PREFIX)]
    sbom = await sbom_of(client, repo, digest)
    if sbom is not None:
        from orchestrator.core.sbom import headline

        level.sbom = headline(sbom)
    return level, summary


def _parent_repository(uri: str | None) -> ImageRef | None:
    """pkg:docker/reg:5000/base/os@1?platform=… -> reg:5000/base/os."""
    if not uri or not uri.startswith("pkg:docker/"):
        return None
    path = unquote(urlsplit(uri).path.removeprefix("docker/"))
    name = path.split("@", 1)[0]
    return parse_repository(name)


async def explain(client: RegistryClient, text: str,
                  key_pem: bytes | None = None) -> list[Level]:
    """The chain from ``text`` down to what it ultimately stands on, leaf first."""
    repo, digest = await resolve(client, text)
    chain: list[Level] = []
    seen: set[str] = set()
    while len(chain) < MAX_DEPTH and digest not in seen:
        seen.add(digest)
        level, summary = await level_of(client, repo, digest, key_pem)
        chain.append(level)
        if summary is None or summary.parent_digest is None:
            break
        parent = _parent_repository(summary.parent_uri)
        if parent is None:
            break
        repo, digest = parent, summary.parent_digest
    if not chain[0].provenance:
        raise NotFound(f"{text}: no provenance is attached to {chain[0].image}")
    return chain


def render(chain: list[Level]) -> str:
    lines = []
    for depth, level in enumerate(chain):
        pad = "  " * depth
        if not level.provenance:
            lines.append(f"{pad}{level.image}  (no provenance: an upstream, or built "
                         "elsewhere)")
            continue
        lines.append(f"{pad}{level.layer}  {level.image}")
        lines.append(f"{pad}  built {level.finished} on {level.builder} "
                     f"(build {level.build_id}; {level.signature})")
        lines.append(f"{pad}  because: {level.cause}")
        if level.sbom:
            parts = [level.sbom.get("os") or "no OS release file"]
            parts += [f"{n} {k} packages" for k, n in level.sbom["ecosystems"].items()]
            parts += [f"{label} {', '.join(level.sbom[label])}"
                      for label in ("python", "flask") if level.sbom.get(label)]
            lines.append(f"{pad}  contents: {'; '.join(parts)}")
        for name, up in sorted(level.upstreams.items()):
            digest = next(iter(up["digest"].values()), "?")
            lines.append(f"{pad}  upstream {name}: {up['uri']} {digest[:19]}")
        for index in level.packages:
            digest = next(iter(index["digest"].values()), "?")
            lines.append(f"{pad}  package index {index['suite']}: {index['uri']} "
                         f"{digest[:12]}" + (f" ({index['date']})" if index.get("date") else ""))
            if index.get("fixes"):
                lines.append(f"{pad}    fixes: {index['fixes']}")
    return "\n".join(lines)
