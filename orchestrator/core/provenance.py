"""SLSA v1 provenance for one pushed image, as an in-toto Statement. Pure.

``build_statement`` turns plain build facts into the Statement dict;
``encode_statement`` gives the bytes that are stored (bare, when unsigned) or
wrapped in a DSSE envelope (``orchestrator.core.dsse``); ``read_statement``
validates a stored Statement and returns what ``explain`` shows.

Layout of the predicate (buildType ``BUILD_TYPE``):

- ``buildDefinition.externalParameters``: what the catalog asked for — layer
  id, Dockerfile path, build args, platform.
- ``buildDefinition.internalParameters``: what the orchestrator decided —
  the build key and the reason it built.
- ``buildDefinition.resolvedDependencies``: every input pinned by digest, named
  ``dockerfile``, ``context``, ``parent`` and ``upstream:NAME``. Images use
  BuildKit's form (``pkg:docker/NAME@TAG?platform=…`` with a sha256 digest)
  and git sources ``REMOTE#refs/tags/TAG`` with ``gitCommit``/``sha1``, so a
  reader that knows BuildKit's provenance reads ours too. Package index
  snapshots are ``packages:SUITE``: the Release read, its sha256 and its Date.
- ``runDetails``: builder id and versions (orchestrator + engine), the build id
  as ``invocationId``, times, and the cause in the ``orchestrator_cause``
  extension field (SLSA's ``<vendor>_<field>`` convention), since no standard
  field says why a build ran.

Only the standard library is imported: ``explain`` reads statements on the CLI
path, where start-up time matters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.imageref import DOCKER_HUB, parse_repository
from orchestrator.core.redact import redact_value

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# Ours: the schema of externalParameters/internalParameters described above.
BUILD_TYPE = "https://orchestrator.dev/build/v1"
BUILDER_ID_PREFIX = "https://orchestrator.dev/builder/"
# The DSSE payloadType and OCI artifact media type of a bare Statement.
STATEMENT_MEDIA_TYPE = "application/vnd.in-toto+json"
# resolvedDependencies names of package index snapshots: "packages:bookworm-security".
PACKAGES_PREFIX = "packages:"
SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_GIT_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # sha1 or sha256 object ids


class ProvenanceError(OrchestratorError):
    """A Statement that cannot be built or read; the message names the field."""


@dataclass(frozen=True)
class ImageSubject:
    """The pushed image: repository without tag (``reg:5000/base/py``) + manifest digest."""

    name: str
    digest: str  # "sha256:<hex>"


@dataclass(frozen=True)
class ParentImage:
    """The image this one was built FROM (``BASE_IMAGE``), pinned by digest."""

    repository: str  # "reg:5000/base/os", "alpine"
    digest: str
    tag: str | None = None


@dataclass(frozen=True)
class RegistryUpstream:
    """A registry image the hierarchy follows (``[upstream.NAME]`` with ``image``)."""

    name: str
    image: str  # repository reference as configured ("alpine", "docker.io/library/alpine")
    digest: str
    tag: str | None = None


@dataclass(frozen=True)
class GitUpstream:
    """A git remote the hierarchy follows (``[upstream.NAME]`` with ``git``)."""

    name: str
    remote: str
    commit: str
    tag: str | None = None


Upstream = RegistryUpstream | GitUpstream


@dataclass(frozen=True)
class PackageIndex:
    """A package index snapshot the build was decided against: the Release (or
    APKINDEX) read, by its digest and date."""

    suite: str  # "bookworm-security", "v3.20/main"
    url: str  # ".../dists/bookworm-security/InRelease"
    digest: str  # "sha256:<hex>" of what was read
    date: str | None = None  # the Release's Date field
    # The package fixes it offered that the build was for: "openssl 3.0.15 -> 3.0.16 (DSA-…)".
    fixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Builder:
    """The engine that ran the build: ``buildah``/``buildkit``… and its version."""

    engine: str
    version: str
    id: str | None = None  # a site's own builder URI; default BUILDER_ID_PREFIX + engine


@dataclass(frozen=True)
class BuildFacts:
    """Everything one Statement records, as plain values."""

    subject: ImageSubject
    layer: str
    dockerfile_path: str  # as the catalog names it, relative: "layers/python/Dockerfile"
    dockerfile_sha256: str  # hex
    context_digest: str  # "sha256:<hex>" over the build context
    build_args: Mapping[str, str]
    platform: str  # "linux/amd64"
    builder: Builder
    orchestrator_version: str
    build_id: str
    started: datetime | float  # aware datetime, or epoch seconds
    finished: datetime | float
    cause: str  # "file edit layers/py/Dockerfile", "upstream pyenv v2.4.0 -> v2.4.1", …
    parent: ParentImage | None = None
    upstreams: Sequence[Upstream] = ()
    reason: str | None = None  # the scheduler's wording: "context changed", "forced", …
    parent_build_id: str | None = None
    build_key: str | None = None
    # Package index snapshots (a package fix's, or those the image's sources name).
    package_indexes: Sequence[PackageIndex] = ()
    sbom_digest: str | None = None  # "sha256:<hex>" of the SBOM document attached beside it


@dataclass(frozen=True)
class Dependency:
    """One resolved dependency as read back: ``name`` is ``upstream:pyenv``, ``parent``,
    ``packages:bookworm-security``…"""

    name: str
    uri: str | None
    digest: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvenanceSummary:
    """What ``explain`` shows about one image, read from its Statement."""

    subject_name: str
    subject_digest: str
    layer: str
    build_id: str
    builder_id: str
    builder_versions: Mapping[str, str]
    started: datetime | None
    finished: datetime | None
    cause: str | None
    reason: str | None
    parent_build_id: str | None
    parent_digest: str | None  # "sha256:<hex>"
    parent_uri: str | None
    upstreams: Mapping[str, Dependency]  # by upstream name, without the "upstream:" prefix
    dockerfile_path: str | None
    dockerfile_sha256: str | None
    context_digest: str | None
    build_args: Mapping[str, str]
    platform: str | None
    dependencies: tuple[Dependency, ...] = ()
    build_key: str | None = None
    sbom_digest: str | None = None  # the SBOM document this statement vouches for


# --- building ----------------------------------------------------------------------------


def build_statement(facts: BuildFacts) -> dict[str, Any]:
    """The in-toto Statement (SLSA provenance v1 predicate) for one pushed image."""
    subject_hex = _sha256_hex(facts.subject.digest, "subject.digest")
    if not _HEX64.match(facts.dockerfile_sha256):
        raise ProvenanceError(f"dockerfile_sha256: not a hex sha256: {facts.dockerfile_sha256!r}")
    internal: dict[str, Any] = {}
    if facts.build_key is not None:
        internal["buildKey"] = facts.build_key
    if facts.reason is not None:
        internal["reason"] = facts.reason
    statement: dict[str, Any] = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": facts.subject.name, "digest": {"sha256": subject_hex}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "layer": facts.layer,
                    "dockerfile": facts.dockerfile_path,
                    "args": dict(sorted(facts.build_args.items())),
                    "platform": facts.platform,
                },
                "internalParameters": internal,
                "resolvedDependencies": _dependencies(facts),
            },
            "runDetails": _run_details(facts),
        },
    }
    # The boundary to the registry: whatever a caller passed, no credential goes out.
    redacted: dict[str, Any] = redact_value(statement, keys=False)
    return redacted


def _dependencies(facts: BuildFacts) -> list[dict[str, Any]]:
    """What the build stood on, each pinned by digest: the Dockerfile, the context,
    the parent, every upstream and every package index."""
    dependencies: list[dict[str, Any]] = [
        # The path is in externalParameters; a relative path is no URI.
        {"name": "dockerfile", "digest": {"sha256": facts.dockerfile_sha256}},
        {"name": "context", "digest": {"sha256": _sha256_hex(facts.context_digest,
                                                             "context_digest")}},
    ]
    if facts.parent is not None:
        dependencies.append({
            "name": "parent",
            "uri": docker_purl(facts.parent.repository, facts.parent.tag, facts.platform),
            "digest": {"sha256": _sha256_hex(facts.parent.digest, "parent.digest")},
        })
    seen: set[str] = set()
    for upstream in sorted(facts.upstreams, key=lambda u: u.name):
        if upstream.name in seen:
            raise ProvenanceError(f"upstreams: {upstream.name!r} listed twice")
        seen.add(upstream.name)
        dependencies.append(_upstream_descriptor(upstream, facts.platform))
    urls: set[str] = set()
    for index in sorted(facts.package_indexes, key=lambda i: (i.suite, i.url)):
        if index.url in urls:
            raise ProvenanceError(f"package_indexes: {index.url!r} listed twice")
        urls.add(index.url)
        descriptor: dict[str, Any] = {
            "name": PACKAGES_PREFIX + index.suite, "uri": index.url,
            "digest": {"sha256": _sha256_hex(index.digest, f"package index {index.url}")}}
        annotations = {"date": index.date} if index.date else {}
        if index.fixes:
            annotations["fixes"] = "; ".join(index.fixes)
        if annotations:
            descriptor["annotations"] = annotations
        dependencies.append(descriptor)
    return dependencies


def _run_details(facts: BuildFacts) -> dict[str, Any]:
    """Who built it, when, why, and the byproducts (the SBOM, by digest)."""
    cause: dict[str, Any] = {"text": facts.cause}
    if facts.parent_build_id is not None:
        cause["parentBuildId"] = facts.parent_build_id
    run_details: dict[str, Any] = {
        "builder": {
            "id": facts.builder.id or BUILDER_ID_PREFIX + facts.builder.engine,
            "version": {"orchestrator": facts.orchestrator_version,
                        facts.builder.engine: facts.builder.version},
        },
        "metadata": {
            "invocationId": facts.build_id,
            "startedOn": _timestamp(facts.started, "started"),
            "finishedOn": _timestamp(facts.finished, "finished"),
            "orchestrator_cause": cause,
        },
    }
    if facts.sbom_digest is not None:
        run_details["byproducts"] = [{
            "name": "sbom", "mediaType": SBOM_MEDIA_TYPE,
            "digest": {"sha256": _sha256_hex(facts.sbom_digest, "sbom_digest")}}]
    return run_details


def encode_statement(statement: Mapping[str, Any]) -> bytes:
    """Stable bytes: sorted keys, no whitespace, UTF-8. The same facts give the same
    bytes, so re-pushing an unchanged statement yields the same artifact digest."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def docker_purl(repository: str, tag: str | None, platform: str | None = None,
                digest: str | None = None) -> str:
    """BuildKit's purl for an image: Docker Hub's ``library/`` names shortened
    (``pkg:docker/alpine@3.20``), other registries kept in the namespace
    (``pkg:docker/reg:5000/base/os@1``), the platform percent-encoded."""
    ref = parse_repository(repository)
    if ref.registry == DOCKER_HUB:
        path = ref.repository.removeprefix("library/")
    else:
        path = f"{ref.registry}/{ref.repository}"
    text = "pkg:docker/" + quote(path, safe="/:")
    if tag is not None:
        text += "@" + quote(tag, safe="")
    qualifiers = []
    if digest is not None:
        qualifiers.append("digest=" + quote(digest, safe=":"))
    if platform:
        qualifiers.append("platform=" + quote(platform, safe=""))
    return text + ("?" + "&".join(qualifiers) if qualifiers else "")


def _upstream_descriptor(upstream: Upstream, platform: str) -> dict[str, Any]:
    name = f"upstream:{upstream.name}"
    if isinstance(upstream, RegistryUpstream):
        return {"name": name, "uri": docker_purl(upstream.image, upstream.tag, platform),
                "digest": {"sha256": _sha256_hex(upstream.digest, f"{name}.digest")}}
    commit = upstream.commit.lower()
    if not _GIT_COMMIT.match(commit):
        raise ProvenanceError(f"{name}.commit: not a git object id: {upstream.commit!r}")
    # gitCommit is in-toto's name for a commit id; BuildKit writes sha1. A sha1
    # repository's commit id is the sha1 of the commit object, so both hold.
    digest = {"gitCommit": commit}
    if len(commit) == 40:
        digest["sha1"] = commit
    uri = upstream.remote + (f"#refs/tags/{upstream.tag}" if upstream.tag else "")
    return {"name": name, "uri": uri, "digest": digest}


def _sha256_hex(digest: str, where: str) -> str:
    if not _DIGEST.match(digest):
        raise ProvenanceError(f"{where}: not a sha256 digest: {digest!r}")
    return digest.removeprefix("sha256:")


def _timestamp(value: datetime | float, where: str) -> str:
    """RFC 3339 in UTC with a ``Z``, as in-toto's Timestamp field type asks."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ProvenanceError(f"{where}: naive datetime; pass an aware one (UTC)")
        moment = value.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(value, UTC)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


# --- reading -----------------------------------------------------------------------------


def read_statement(statement: Mapping[str, Any] | bytes | str) -> ProvenanceSummary:
    """Validate a Statement written by ``build_statement`` and return what ``explain``
    needs. Unknown fields are ignored, as in-toto's parsing rules ask."""
    data = _load(statement)
    subject, subject_hex = _subject(data)
    predicate = _obj(data.get("predicate"), "predicate")
    definition = _obj(predicate.get("buildDefinition"), "predicate.buildDefinition")
    if definition.get("buildType") != BUILD_TYPE:
        raise ProvenanceError(f"buildType: expected {BUILD_TYPE}, "
                              f"got {definition.get('buildType')!r}")
    external = _obj(definition.get("externalParameters"), "externalParameters")
    internal = _obj(definition.get("internalParameters") or {}, "internalParameters")
    args = _obj(external.get("args") or {}, "externalParameters.args")
    if not all(isinstance(v, str) for v in args.values()):
        raise ProvenanceError("externalParameters.args: values must be strings")

    dependencies = tuple(_dependency(d, i) for i, d in
                         enumerate(definition.get("resolvedDependencies") or []))
    by_name = {d.name: d for d in dependencies}
    parent = by_name.get("parent")
    dockerfile = by_name.get("dockerfile")
    context = by_name.get("context")

    run = _obj(predicate.get("runDetails"), "predicate.runDetails")
    builder = _obj(run.get("builder"), "runDetails.builder")
    versions = _obj(builder.get("version") or {}, "runDetails.builder.version")
    metadata = _obj(run.get("metadata") or {}, "runDetails.metadata")
    cause = _obj(metadata.get("orchestrator_cause") or {}, "metadata.orchestrator_cause")
    sbom_hex = _sbom_hex(run)

    return ProvenanceSummary(
        subject_name=_opt_str(subject, "name", "subject[0]") or "",
        subject_digest="sha256:" + subject_hex,
        layer=_str(external, "layer", "externalParameters"),
        build_id=_str(metadata, "invocationId", "runDetails.metadata"),
        builder_id=_str(builder, "id", "runDetails.builder"),
        builder_versions={str(k): str(v) for k, v in versions.items()},
        started=_parse_time(metadata.get("startedOn"), "startedOn"),
        finished=_parse_time(metadata.get("finishedOn"), "finishedOn"),
        cause=_opt_str(cause, "text", "orchestrator_cause"),
        reason=_opt_str(internal, "reason", "internalParameters"),
        parent_build_id=_opt_str(cause, "parentBuildId", "orchestrator_cause"),
        parent_digest=_sha256_of(parent),
        parent_uri=parent.uri if parent else None,
        upstreams={d.name.removeprefix("upstream:"): d for d in dependencies
                   if d.name.startswith("upstream:")},
        dockerfile_path=_opt_str(external, "dockerfile", "externalParameters"),
        dockerfile_sha256=dockerfile.digest.get("sha256") if dockerfile else None,
        context_digest=_sha256_of(context),
        build_args={str(k): v for k, v in args.items()},
        platform=_opt_str(external, "platform", "externalParameters"),
        dependencies=dependencies,
        build_key=_opt_str(internal, "buildKey", "internalParameters"),
        sbom_digest="sha256:" + sbom_hex if sbom_hex is not None else None,
    )


def _subject(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The statement's kind checked, and its one subject with its sha256 (hex)."""
    if data.get("_type") != STATEMENT_TYPE:
        raise ProvenanceError(f"_type: expected {STATEMENT_TYPE}, got {data.get('_type')!r}")
    if data.get("predicateType") != PREDICATE_TYPE:
        raise ProvenanceError(f"predicateType: expected {PREDICATE_TYPE}, "
                              f"got {data.get('predicateType')!r}")
    subjects = _list(data, "subject", "subject")
    if len(subjects) != 1:
        raise ProvenanceError(f"subject: expected one image, got {len(subjects)}")
    subject = _obj(subjects[0], "subject[0]")
    subject_hex = _str(_obj(subject.get("digest"), "subject[0].digest"), "sha256",
                       "subject[0].digest")
    if not _HEX64.match(subject_hex):
        raise ProvenanceError(f"subject[0].digest.sha256: not a hex sha256: {subject_hex!r}")
    return subject, subject_hex


def _sbom_hex(run: Mapping[str, Any]) -> str | None:
    """The SBOM the statement names among its byproducts (sha256, hex), if any."""
    byproducts = run.get("byproducts") or []
    if not isinstance(byproducts, list):
        raise ProvenanceError("runDetails.byproducts: expected a list")
    sbom = next((_obj(b, "runDetails.byproducts[]") for b in byproducts
                 if isinstance(b, Mapping) and b.get("name") == "sbom"), None)
    if sbom is None:
        return None
    sbom_hex = _str(_obj(sbom.get("digest"), "byproducts.sbom.digest"), "sha256",
                    "byproducts.sbom.digest")
    if not _HEX64.match(sbom_hex):
        raise ProvenanceError(f"byproducts.sbom.digest.sha256: not a hex sha256: {sbom_hex!r}")
    return sbom_hex


def _load(statement: Mapping[str, Any] | bytes | str) -> Mapping[str, Any]:
    if isinstance(statement, bytes | str):
        try:
            loaded = json.loads(statement)
        except ValueError as exc:
            raise ProvenanceError(f"not JSON: {exc}") from exc
        return _obj(loaded, "statement")
    return statement


def _dependency(value: Any, index: int) -> Dependency:
    where = f"resolvedDependencies[{index}]"
    item = _obj(value, where)
    digest = _obj(item.get("digest") or {}, f"{where}.digest")
    if not all(isinstance(v, str) for v in digest.values()):
        raise ProvenanceError(f"{where}.digest: values must be strings")
    uri = _opt_str(item, "uri", where)
    if uri is None and not digest:
        raise ProvenanceError(f"{where}: needs a uri or a digest")
    annotations = _obj(item.get("annotations") or {}, f"{where}.annotations")
    return Dependency(_opt_str(item, "name", where) or "", uri, dict(digest),
                      {str(k): str(v) for k, v in annotations.items()})


def _sha256_of(dependency: Dependency | None) -> str | None:
    if dependency is None or "sha256" not in dependency.digest:
        return None
    return "sha256:" + dependency.digest["sha256"]


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProvenanceError(f"{where}: expected a timestamp string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ProvenanceError(f"{where}: not an RFC 3339 timestamp: {value!r}") from exc
    if moment.tzinfo is None:
        raise ProvenanceError(f"{where}: timestamp without a time zone: {value!r}")
    return moment.astimezone(UTC)


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProvenanceError(f"{where}: expected an object")
    return value


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ProvenanceError(f"{where}: expected a list")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProvenanceError(f"{where}.{key}: expected a non-empty string")
    return value


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":  # unset, null and empty mean the same (SLSA)
        return None
    if not isinstance(value, str):
        raise ProvenanceError(f"{where}.{key}: expected a string")
    return value
