"""Keeping the registry bounded: key tags beyond the newest N per layer go.

Every build leaves a ``bk-<key>`` tag. With ``[registry] keep = N``, per layer
the N newest keys (by when each key was first built) stay and older ones are
deleted through the registry API (a manifest DELETE by digest), together with
the artifacts attached to them. Never deleted: an image a human tag points at
(``python:3.13.5``), or one the current hierarchy stands on (a child's
``base.digest``, a layer's current image). A DELETE removes the manifest, not
its blobs: the registry's own garbage collection reclaims the space
(``registry garbage-collect`` for the distribution registry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.build.state import AsyncStateStore
from orchestrator.core.buildkey import KEY_TAG_PREFIX
from orchestrator.core.imageref import ImageRef, parse_repository
from orchestrator.core.model import Catalog, Config
from orchestrator.registry.artifacts import referrers, referrers_tag
from orchestrator.registry.client import RegistryClient


@dataclass(frozen=True)
class KeyImage:
    repository: str
    tag: str
    digest: str
    layer: str | None
    first_built: float
    why_kept: str | None = None


@dataclass
class GcPlan:
    keep: list[KeyImage] = field(default_factory=list)
    delete: list[KeyImage] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"delete {k.repository}:{k.tag} ({k.layer or '?'}, {k.digest[:19]})"
                 for k in self.delete]
        lines += [f"keep   {k.repository}:{k.tag} ({k.layer or '?'}): {k.why_kept}"
                  for k in self.keep]
        lines.append(f"{len(self.delete)} to delete, {len(self.keep)} kept")
        return "\n".join(lines)


def _platform_tag(tag: str) -> bool:
    """bk-<64 hex>-linux-arm64: one platform's image of a multi-platform key."""
    return tag.startswith(KEY_TAG_PREFIX) and len(tag) > len(KEY_TAG_PREFIX) + 64


async def _label_of(client: RegistryClient, repo: ImageRef, digest: str,
                    prefix: str) -> tuple[str | None, float]:
    """(layer, created) from an image's config, for keys this host never built."""
    manifest = await client.get_manifest(repo, digest)
    data = manifest.json() if manifest else {}
    config = (data.get("config") or {}).get("digest")
    if isinstance(data.get("manifests"), list):  # an index: its annotations carry them
        labels = data.get("annotations") or {}
    elif isinstance(config, str):
        labels = (json.loads(await client.get_blob(repo, config)).get("config") or {}).get(
            "Labels") or {}
    else:
        return None, 0.0
    created = labels.get("org.opencontainers.image.created", "")
    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        when = 0.0
    return labels.get(f"{prefix}.layer"), when


async def plan_gc(config: Config, catalog: Catalog, state: AsyncStateStore,
                  client: RegistryClient, keep: int) -> GcPlan:
    assert config.registry is not None
    known = await state.records.keys()
    in_use = await in_use_now(state)
    plan = GcPlan()
    for image in sorted({layer.image for layer in catalog.layers.values()}):
        repo = parse_repository(config.registry.repository(image))
        tags = await client.tags(repo)
        digests = {tag: await client.manifest_digest(repo, tag) for tag in tags
                   if not tag.startswith("sha256-")}
        human = {d for t, d in digests.items() if not t.startswith(KEY_TAG_PREFIX) and d}
        per_layer: dict[str | None, list[KeyImage]] = {}
        for tag, digest in digests.items():
            if not tag.startswith(KEY_TAG_PREFIX) or digest is None or _platform_tag(tag):
                continue  # a platform's image goes with its key's index, below
            key = tag[len(KEY_TAG_PREFIX):]
            layer: str | None
            if key in known:
                layer, first = known[key]
            else:
                layer, first = await _label_of(client, repo, digest,
                                               config.build.label_prefix)
            per_layer.setdefault(layer, []).append(KeyImage(repo.name, tag, digest, layer,
                                                            first))
        platform_tags = {t: d for t, d in digests.items() if _platform_tag(t) and d}
        # A platform's image whose key tag never came (a build that failed after
        # the engine pushed it) is an orphan: nothing names it as complete.
        keys = {t for t in digests if t.startswith(KEY_TAG_PREFIX) and not _platform_tag(t)}
        for tag, digest in platform_tags.items():
            if tag[:len(KEY_TAG_PREFIX) + 64] in keys:
                continue
            why = ("a human tag points at it" if digest in human else
                   "the current hierarchy stands on it" if digest in in_use else None)
            orphan = KeyImage(repo.name, tag, digest, None, 0.0, why)
            (plan.keep if why else plan.delete).append(orphan)
        for layer_id, images in per_layer.items():
            images.sort(key=lambda k: k.first_built, reverse=True)
            for rank, item in enumerate(images):
                platforms = [KeyImage(item.repository, tag, digest, item.layer,
                                      item.first_built)
                             for tag, digest in platform_tags.items()
                             if tag.startswith(item.tag + "-")]
                mine = {item.digest, *(p.digest for p in platforms)}
                why = ("its layer is unknown (no state, no label): never guessed at"
                       if layer_id is None else
                       "among the newest" if rank < keep else
                       "a human tag points at it" if mine & human else
                       "the current hierarchy stands on it" if mine & in_use else None)
                if why is None:
                    plan.delete.append(item)
                    plan.delete += platforms  # a multi-platform key: its platforms go too
                else:
                    plan.keep.append(KeyImage(item.repository, item.tag, item.digest,
                                              item.layer, item.first_built, why))
    return plan


async def _human_tagged(client: RegistryClient, repo: ImageRef, digest: str) -> bool:
    for tag in await client.tags(repo):
        if tag.startswith((KEY_TAG_PREFIX, "sha256-")):
            continue
        if await client.manifest_digest(repo, tag) == digest:
            return True
    return False


async def in_use_now(state: AsyncStateStore) -> set[str]:
    """What the hierarchy stands on at this moment: every layer's image (and its
    platforms' images) and every parent digest."""
    records = await state.records.all()
    return ({r.digest for r in records.values()} |
            {d for r in records.values() for d in r.platform_digests.values()} |
            {r.inputs.parent_digest for r in records.values()})


async def apply_gc(client: RegistryClient, plan: GcPlan,
                   state: AsyncStateStore | None = None) -> int:
    """Delete what the plan says, artifacts first (they name the image as subject).
    With ``state``, the plan is checked once more against what the hierarchy
    stands on now (a run since the plan may have made a key current again).
    Once is enough: whoever deletes owns the state dir (`gc` takes its lock,
    the daemon runs retention between runs), so no run can change it while
    the DELETEs go out; reading every layer's record per image would not."""
    in_use = await in_use_now(state) if state is not None else set()
    removed = 0
    for item in plan.delete:
        if item.digest in in_use:
            continue
        repo = parse_repository(item.repository)
        # A human tag put on it since the plan (a release tagged by hand) keeps
        # it: checked right before its DELETE, which would take the tag along.
        if await _human_tagged(client, repo, item.digest):
            continue
        for referrer in await referrers(client, repo, item.digest):
            await client.delete_manifest(repo, referrer.digest)
        index = await client.manifest_digest(repo, referrers_tag(item.digest))
        if index is not None:
            await client.delete_manifest(repo, index)
        removed += await client.delete_manifest(repo, item.digest)
    return removed
