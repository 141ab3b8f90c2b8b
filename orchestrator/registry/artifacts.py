"""OCI artifacts that refer to an image: attach them, list them, read them back.

An artifact is an OCI image manifest with an ``artifactType``, the empty config
and one layer (the statement or SBOM), and a ``subject`` naming the image's
manifest. Registries with the OCI 1.1 referrers API index it on push (they
answer ``OCI-Subject``); for those without it (the distribution registry 2.8),
the referrers tag scheme: an index tagged ``sha256-<hex of the subject>``
lists the artifacts, and is read, extended and pushed again. Artifacts are
pushed before the index that lists them, as registries require. The image
itself is never touched: its digest does not change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from orchestrator.core.imageref import ImageRef
from orchestrator.registry.client import Manifest, RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


@dataclass(frozen=True)
class Artifact:
    artifact_type: str
    media_type: str  # of its one layer: the document
    data: bytes
    annotations: dict[str, str]


@dataclass(frozen=True)
class Referrer:
    digest: str
    artifact_type: str
    annotations: dict[str, str]


def referrers_tag(subject_digest: str) -> str:
    algorithm, _, hexpart = subject_digest.partition(":")
    return f"{algorithm}-{hexpart}"


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


async def attach(client: RegistryClient, repo: ImageRef, subject: Manifest,
                 artifacts: list[Artifact]) -> list[str]:
    """Push ``artifacts`` as referrers of ``subject``; returns their manifest digests."""
    empty = await client.upload_blob(repo, EMPTY_JSON)
    descriptors: list[dict[str, Any]] = []
    indexed_by_registry = True
    for artifact in artifacts:
        layer = await client.upload_blob(repo, artifact.data)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact.artifact_type,
            "config": {"mediaType": EMPTY_CONFIG, "digest": empty, "size": len(EMPTY_JSON)},
            "layers": [{"mediaType": artifact.media_type, "digest": layer,
                        "size": len(artifact.data)}],
            "subject": {"mediaType": subject.media_type, "digest": subject.digest,
                        "size": len(subject.body)},
            "annotations": artifact.annotations,
        }
        body = _encode(manifest)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        headers = await client.put_manifest(repo, digest, body, OCI_MANIFEST)
        indexed_by_registry = indexed_by_registry and bool(headers.get("OCI-Subject"))
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                            "artifactType": artifact.artifact_type,
                            "annotations": artifact.annotations})
    if not indexed_by_registry:
        await _extend_referrers_index(client, repo, subject.digest, descriptors)
    return [d["digest"] for d in descriptors]


async def _extend_referrers_index(client: RegistryClient, repo: ImageRef, subject: str,
                                  descriptors: list[dict[str, Any]]) -> None:
    tag = referrers_tag(subject)
    current = await client.get_manifest(repo, tag)
    manifests: list[dict[str, Any]] = list(current.json().get("manifests") or []) \
        if current is not None else []
    known = {m.get("digest") for m in manifests}
    manifests += [d for d in descriptors if d["digest"] not in known]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    await client.put_manifest(repo, tag, _encode(index), OCI_INDEX)


async def referrers(client: RegistryClient, repo: ImageRef, subject: str,
                    artifact_type: str | None = None) -> list[Referrer]:
    """What refers to ``subject``: from the referrers API, else the referrers tag."""
    index = await client.referrers_index(repo, subject)
    if index is None:
        found = await client.get_manifest(repo, referrers_tag(subject))
        index = found.json() if found is not None else {}
    out = []
    for entry in index.get("manifests") or []:
        kind = str(entry.get("artifactType") or "")
        if artifact_type is None or kind == artifact_type:
            out.append(Referrer(str(entry.get("digest")), kind,
                                dict(entry.get("annotations") or {})))
    return out


async def read_artifact(client: RegistryClient, repo: ImageRef, digest: str) -> bytes:
    """The document an artifact manifest carries (its one layer)."""
    manifest = await client.get_manifest(repo, digest)
    if manifest is None:
        raise LookupError(f"artifact {digest} is gone from {repo.name}")
    layers = manifest.json().get("layers") or []
    if not layers:
        raise LookupError(f"artifact {digest} in {repo.name} carries no document")
    return await client.get_blob(repo, str(layers[0]["digest"]))
