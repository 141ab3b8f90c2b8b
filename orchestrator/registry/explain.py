"""Reading an image's papers back from the registry: the chain of provenance
statements down to the upstream it stands on, and its SBOM.

Nothing comes from local state, so it works on any host that can read the
registry. Each level is found by the digest the level above names as its
parent; the chain ends where an image carries no provenance (an upstream,
or an image built elsewhere).

Which attached statement counts is decided by ``core.attestation``: its own
subject must be the image, and with a public key its signature must verify;
annotations, which whoever pushes sets, decide nothing. Each level's parent
must also be what the image's own ``base.digest`` label says (the label is
inside the image, so its digest vouches for it). Every credential is taken
out of what is shown (statements pushed by older versions may carry one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from orchestrator.core import provenance
from orchestrator.core.attestation import Attached, Judgement, SbomChoice, choose_sbom, judge
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.imageref import ImageRef, parse_reference, parse_repository
from orchestrator.core.platforms import from_machine
from orchestrator.core.redact import public_url, redact_text, redact_value
from orchestrator.registry.artifacts import read_artifact, referrers
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.index import INDEX_TYPES, platform_manifests

SBOM_TYPE = provenance.SBOM_MEDIA_TYPE
MAX_DEPTH = 64
# Statements (or SBOMs) read per image at most: a reproducible layer rebuilt
# weekly for years stays far below; a flood pushed to hide one does not.
MAX_ATTACHED = 256
BASE_DIGEST_LABEL = "org.opencontainers.image.base.digest"


class NotFound(OrchestratorError):
    """The image, or its provenance, is not in the registry (exit 1)."""


class Untrusted(OrchestratorError):
    """Provenance that is attached but cannot be believed (exit 1): none of the
    statements counts, verified ones disagree, or a parent is not the image's own."""


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
    statements: int = 0  # attached statements that count (rebuilds to the same digest)
    # Attached but not counted, with why: another image's, unsigned, altered.
    ignored: list[dict[str, str]] = field(default_factory=list)
    # Counted, but made of other inputs than the one shown (fatal under --verify).
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    sbom_bound: bool = False  # the SBOM shown is the one the statement names
    # Package index snapshots the build was for (a package fix): suite, uri, digest,
    # date and the fixes they offered.
    packages: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


async def statements(client: RegistryClient, repo: ImageRef, digest: str,
                     key_pem: bytes | None) -> list[Attached]:
    """Every provenance statement attached to ``repo@digest``, opened (and verified
    with ``key_pem``); one that cannot be read or verified is kept, with why."""
    from orchestrator.core.dsse import SignatureError, open_document

    found = await referrers(client, repo, digest, provenance.STATEMENT_MEDIA_TYPE)
    if len(found) > MAX_ATTACHED:
        raise Untrusted(f"{repo.name}@{digest}: {len(found)} provenance statements are "
                        f"attached, more than {MAX_ATTACHED}; refusing to read them")
    out = []
    for referrer in found:
        try:
            opened = open_document(await read_artifact(client, repo, referrer.digest), key_pem)
            summary = provenance.read_statement(opened.payload)
        except (SignatureError, provenance.ProvenanceError, LookupError) as exc:
            out.append(Attached(referrer.digest, None, "rejected", str(exc)))
            continue
        out.append(Attached(referrer.digest, summary, opened.status))
    return out


async def sboms(client: RegistryClient, repo: ImageRef, digest: str,
                named: str | None = None) -> list[tuple[str, bytes]]:
    """(document digest, document) of the SBOMs attached to ``repo@digest``; with
    ``named``, only that document is fetched (the others may be large)."""
    found = await referrers(client, repo, digest, SBOM_TYPE)
    if len(found) > MAX_ATTACHED:
        raise Untrusted(f"{repo.name}@{digest}: {len(found)} SBOMs are attached, more than "
                        f"{MAX_ATTACHED}; refusing to read them")
    out = []
    for referrer in found:
        manifest = await client.get_manifest(repo, referrer.digest)
        layers = (manifest.json().get("layers") or []) if manifest is not None else []
        blob = layers[0].get("digest") if layers and isinstance(layers[0], dict) else None
        if not isinstance(blob, str) or (named is not None and blob != named):
            continue
        # get_blob checks the bytes against the digest: the document is the one named.
        out.append((blob, await client.get_blob(repo, blob)))
        if named is not None:
            break
    return out


async def sbom_of(client: RegistryClient, repo: ImageRef, digest: str,
                  key_pem: bytes | None = None) -> SbomChoice:
    """The image's SBOM by the rules of ``core.attestation``: the one its provenance
    names, else the one(s) describing it. With ``key_pem`` only an SBOM a verified
    statement names counts."""
    verdict = judge(await statements(client, repo, digest, key_pem), digest,
                    key=key_pem is not None)
    _check(f"{repo.name}@{digest}", verdict, key_pem is not None)
    named = verdict.chosen.summary.sbom_digest \
        if verdict.chosen is not None and verdict.chosen.summary is not None else None
    if key_pem is not None and named is None:
        raise Untrusted(f"{repo.name}@{digest}: no verified provenance names an SBOM")
    return choose_sbom(await sboms(client, repo, digest, named), digest, named)


def _check(image: str, verdict: Judgement, verify: bool) -> None:
    """Statements were attached: some must count, and under --verify agree."""
    if verdict.chosen is None:
        if verdict.ignored:
            raise Untrusted(f"{image}: no provenance statement attached to it counts: "
                            f"{verdict.ignored_text()}")
        return
    if verify and verdict.conflicts:
        shown = verdict.chosen.summary
        assert shown is not None
        others = ", ".join(f"build {c.summary.build_id} (key {c.summary.build_key})"
                           for c in verdict.conflicts if c.summary is not None)
        raise Untrusted(f"{image}: verified statements disagree on what it was made of: "
                        f"build {shown.build_id} (key {shown.build_key}) vs {others}")


async def level_of(client: RegistryClient, repo: ImageRef, digest: str,
                   key_pem: bytes | None) -> tuple[Level, provenance.ProvenanceSummary | None]:
    level = Level(f"{repo.name}@{digest}")
    found = await statements(client, repo, digest, key_pem)
    if not found:
        level.provenance = False
        return level, None
    verdict = judge(found, digest, key=key_pem is not None)
    level.ignored = [{"artifact": d, "why": redact_text(why)} for d, why in verdict.ignored]
    _check(level.image, verdict, key_pem is not None)
    assert verdict.chosen is not None and verdict.chosen.summary is not None
    summary = verdict.chosen.summary
    level.statements = len(verdict.counted)
    level.conflicts = [{"artifact": c.artifact, "build_id": c.summary.build_id,
                        "build_key": c.summary.build_key,
                        "finished": c.summary.finished.isoformat() if c.summary.finished
                        else None}
                       for c in verdict.conflicts if c.summary is not None]
    level.layer = redact_text(summary.layer)
    level.reason = redact_text(summary.reason) if summary.reason else None
    level.cause = redact_text(summary.cause) if summary.cause else None
    level.build_id = summary.build_id
    level.started = summary.started.isoformat() if summary.started else None
    level.finished = summary.finished.isoformat() if summary.finished else None
    level.builder = redact_text(", ".join(f"{k} {v}"
                                          for k, v in summary.builder_versions.items()))
    level.signature = verdict.chosen.status
    level.upstreams = {name: {"uri": public_url(dep.uri) if dep.uri else None,
                              "digest": dict(dep.digest)}
                       for name, dep in summary.upstreams.items()}
    # A package index's URL may be a private mirror's, with its user:password@.
    level.packages = redact_value([
        {"suite": dep.name.removeprefix(provenance.PACKAGES_PREFIX), "uri": dep.uri,
         "digest": dict(dep.digest), **dict(dep.annotations)}
        for dep in summary.dependencies if dep.name.startswith(provenance.PACKAGES_PREFIX)],
        keys=False)
    sbom = choose_sbom(await sboms(client, repo, digest, summary.sbom_digest), digest,
                       summary.sbom_digest)
    if sbom.document is not None:
        from orchestrator.core.sbom import headline

        level.sbom = headline(sbom.document)
        level.sbom_bound = sbom.bound
    return level, summary


async def _image_labels(client: RegistryClient, repo: ImageRef, digest: str) -> dict[str, str]:
    """The labels in an image's config (which its digest covers); {} for an index."""
    manifest = await client.get_manifest(repo, digest)
    if manifest is None:
        raise NotFound(f"{repo.name}@{digest}: no such image in its registry")
    data = manifest.json()
    if manifest.media_type in INDEX_TYPES or data.get("mediaType") in INDEX_TYPES:
        return {}
    config = (data.get("config") or {}).get("digest")
    if not isinstance(config, str):
        return {}
    labels = (json.loads(await client.get_blob(repo, config)).get("config") or {}).get("Labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


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
        # The statement's parent must be the one the image itself names: an
        # unsigned statement could otherwise send the walk anywhere.
        label = (await _image_labels(client, repo, digest)).get(BASE_DIGEST_LABEL)
        if label is not None and label != summary.parent_digest:
            raise Untrusted(f"{level.image}: its provenance names parent "
                            f"{summary.parent_digest}, but the image's own {BASE_DIGEST_LABEL} "
                            f"label says {label}")
        parent = _parent_repository(summary.parent_uri)
        if parent is None:
            break
        repo, digest = parent, summary.parent_digest
        # A single-platform child of a multi-platform parent names the index:
        # the papers are on the manifest of the child's platform.
        platforms = await platform_manifests(client, repo, digest)
        if platforms and summary.platform in platforms:
            digest = platforms[summary.platform]
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
        for other in level.conflicts:
            lines.append(f"{pad}  CONFLICT: statement {other['artifact'][:19]}… (build "
                         f"{other['build_id']}, key {other['build_key']}) says it was made "
                         "of other inputs")
        for ignored in level.ignored:
            lines.append(f"{pad}  ignored: statement {ignored['artifact'][:19]}… "
                         f"{ignored['why']}")
        for index in level.packages:
            digest = next(iter(index["digest"].values()), "?")
            lines.append(f"{pad}  package index {index['suite']}: {index['uri']} "
                         f"{digest[:12]}" + (f" ({index['date']})" if index.get("date") else ""))
            if index.get("fixes"):
                lines.append(f"{pad}    fixes: {index['fixes']}")
    return "\n".join(lines)
