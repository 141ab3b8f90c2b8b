"""Multi-platform images as OCI image indexes, assembled through the registry API.

Each platform is built as its own image (FROM its parent's image for that
platform) and pushed under a per-platform key tag; the index that lists them
is then pushed by its digest, and tagged (key tag, then the layer's tags) once
its attestations are attached. The same for every engine, so each platform's parent is
pinned exactly, whatever the engine can or cannot do in one call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from orchestrator.core.imageref import ImageRef
from orchestrator.core.platforms import of_descriptor, split
from orchestrator.registry.client import RegistryClient

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")


async def platform_manifests(client: RegistryClient, repo: ImageRef,
                             digest: str) -> dict[str, str]:
    """platform -> manifest digest of an index; {} for a single-platform image."""
    manifest = await client.get_manifest(repo, digest)
    if manifest is None:
        raise LookupError(f"{repo.name}@{digest} is not in the registry")
    data = manifest.json()
    if manifest.media_type not in INDEX_TYPES and data.get("mediaType") not in INDEX_TYPES:
        return {}
    out: dict[str, str] = {}
    for entry in data.get("manifests") or []:
        platform = of_descriptor(entry)
        if platform is not None and platform != "unknown/unknown":  # attestation entries
            out.setdefault(platform, str(entry["digest"]))
    return out


async def image_platform(client: RegistryClient, repo: ImageRef, digest: str) -> str:
    """The platform of a single-platform image, from its config."""
    manifest = await client.get_manifest(repo, digest)
    config = ((manifest.json() if manifest else {}).get("config") or {}).get("digest")
    if not isinstance(config, str):
        raise LookupError(f"{repo.name}@{digest} has no config")
    data = json.loads(await client.get_blob(repo, config))
    text = f"{data.get('os', 'linux')}/{data.get('architecture', 'amd64')}"
    return f"{text}/{data['variant']}" if data.get("variant") else text


async def push_index(client: RegistryClient, repo: ImageRef, manifests: Mapping[str, str],
                     annotations: Mapping[str, str], tags: list[str]) -> str:
    """Push an index of ``manifests`` (platform -> digest) by its digest, then under
    ``tags`` in order (none: the caller tags it when the build is complete);
    returns the index digest."""
    entries: list[dict[str, Any]] = []
    for platform, digest in sorted(manifests.items()):
        found = await client.get_manifest(repo, digest)
        if found is None:
            raise LookupError(f"{repo.name}@{digest} ({platform}) is not in the registry")
        os_name, arch, variant = split(platform)
        descriptor: dict[str, Any] = {
            "mediaType": found.media_type or "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": len(found.body),
            "platform": {"architecture": arch, "os": os_name}}
        if variant:
            descriptor["platform"]["variant"] = variant
        entries.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
             "annotations": dict(sorted(annotations.items()))}
    body = json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    for reference in (digest, *tags):
        await client.put_manifest(repo, reference, body, OCI_INDEX)
    return digest
