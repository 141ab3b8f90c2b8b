"""Registry retention against a scripted registry: what gc may never delete (a key
made current again while gc runs, one platform's image under a human tag) and how
it ranks keys this host never built."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from orchestrator.build.retention import apply_gc, plan_gc
from orchestrator.build.runs import load
from orchestrator.build.state import AsyncStateStore, LayerRecord, StateStore
from orchestrator.core.model import Inputs
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.transport import Headers, Response
from tests.conftest import Project

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO = "ns/base"
PREFIX = "dev.orchestrator"


class ScriptedRegistry:
    """Tags, manifests and blobs of one registry, in memory, behind the transport seam."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}

    def put(self, body: bytes, media_type: str, *tags: str) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[digest] = (media_type, body)
        self.tags.update(dict.fromkeys(tags, digest))
        return digest

    def image(self, n: int, created: str, arch: str) -> str:
        config = json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": {
            "org.opencontainers.image.created": created, f"{PREFIX}.layer": "base"}}}).encode()
        self.blobs["sha256:" + hashlib.sha256(config).hexdigest()] = config
        return self.put(json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "n": n, "a": arch,
                                    "config": {"digest": "sha256:" + hashlib.sha256(
                                        config).hexdigest()}}).encode(), MANIFEST)

    def index(self, platforms: Mapping[str, str], created: str, *tags: str) -> str:
        return self.put(json.dumps({
            "schemaVersion": 2, "mediaType": INDEX,
            "manifests": [{"mediaType": MANIFEST, "digest": d,
                           "platform": {"os": "linux", "architecture": a}}
                          for a, d in platforms.items()],
            "annotations": {"org.opencontainers.image.created": created,
                            f"{PREFIX}.layer": "base"}}).encode(), INDEX, *tags)

    async def request(self, method: str, url: str, headers: Mapping[str, str],
                      data: bytes | None = None, dest: Path | None = None) -> Response:
        match = re.match(r"https?://[^/]+/v2/(.+)/(manifests|tags|blobs|referrers)/(.*)", url)
        assert match is not None, url
        _, kind, ref = match.groups()
        if kind == "tags":
            return Response(200, Headers(), json.dumps({"tags": sorted(self.tags)}).encode())
        if kind == "referrers":
            return Response(404, Headers(), b"")
        if kind == "blobs":
            return Response(200, Headers(), self.blobs[ref])
        digest = self.tags.get(ref, ref if ref in self.manifests else None)
        if digest is None:
            return Response(404, Headers(), b"")
        if method == "DELETE":
            del self.manifests[digest]
            for tag in [t for t, d in self.tags.items() if d == digest]:
                del self.tags[tag]
            return Response(202, Headers(), b"")
        media_type, body = self.manifests[digest]
        return Response(200, Headers([("Docker-Content-Digest", digest),
                                      ("Content-Type", media_type)]),
                        b"" if method == "HEAD" else body)

    async def close(self) -> None:
        return None


def key(c: str) -> str:
    return c * 64


@pytest.fixture
def setup(project: Project) -> tuple[Path, ScriptedRegistry, dict[str, tuple[str, dict[str, str]]]]:
    project.write_config(f"""
        [catalog]
        layers = "layers"
        [registry]
        url = "127.0.0.1:9/ns"
        keep = 1
        [build]
        label_prefix = "{PREFIX}"
        [state]
        dir = "state"
        [upstream.seed]
        image = "127.0.0.1:9/seed"
        tag = "1"
        tls_verify = false
    """)
    project.layer("base", 'from = "upstream:seed"\ntags = ["1"]\n')
    registry = ScriptedRegistry()
    keys: dict[str, tuple[str, dict[str, str]]] = {}
    # Three two-platform keys of one layer, oldest first; the newest has tag "1".
    for n, (c, created) in enumerate([("1", "2024-01-01T00:00:00Z"),
                                      ("2", "2024-06-01T00:00:00Z"),
                                      ("3", "2025-01-01T00:00:00Z")]):
        platforms = {a: registry.image(n, created, a) for a in ("amd64", "arm64")}
        for arch, digest in platforms.items():
            registry.tags[f"bk-{key(c)}-linux-{arch}"] = digest
        keys[c] = (registry.index(platforms, created, f"bk-{key(c)}",
                                  *(["1"] if c == "3" else [])), platforms)
    return project.config, registry, keys


def _state(config_path: Path, keys: Mapping[str, tuple[str, dict[str, str]]],
           current: str) -> tuple[StateStore, AsyncStateStore]:
    config, _ = load(config_path)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    store = StateStore(config.state_dir / "state.db")
    for n, c in enumerate(sorted(keys)):
        store.records.first_built(key(c), "base", 1000.0 * (n + 1))
    digest, platforms = keys[current]
    store.records.save(LayerRecord("base", key(current), digest, "ref",
                                 Inputs("x", (), (), "sha256:" + "f" * 64), 3000.0, platforms))
    return store, AsyncStateStore(store, inline=True)


async def test_a_key_made_current_while_gc_runs_is_not_deleted(setup: tuple[
        Path, ScriptedRegistry, dict[str, tuple[str, dict[str, str]]]]) -> None:
    config_path, registry, keys = setup
    config, catalog = load(config_path)
    store, state = _state(config_path, keys, current="3")
    client = RegistryClient(transport=registry)
    plan = await plan_gc(config, catalog, state, client, 1)
    assert keys["1"][0] in {k.digest for k in plan.delete}
    # Meanwhile a run reuses key 1 (the inputs were reverted): it is current again.
    store.records.save(LayerRecord("base", key("1"), keys["1"][0], "ref",
                                 Inputs("x", (), (), "sha256:" + "f" * 64), 4000.0,
                                 keys["1"][1]))
    await apply_gc(client, plan, state)
    assert keys["1"][0] in registry.manifests
    assert all(d in registry.manifests for d in keys["1"][1].values())
    assert keys["2"][0] not in registry.manifests  # the rest of the plan still happened
    await state.close()


async def test_a_human_tag_on_one_platforms_image_keeps_its_key(setup: tuple[
        Path, ScriptedRegistry, dict[str, tuple[str, dict[str, str]]]]) -> None:
    config_path, registry, keys = setup
    config, catalog = load(config_path)
    _, state = _state(config_path, keys, current="3")
    registry.tags["pinned-arm64"] = keys["1"][1]["arm64"]
    client = RegistryClient(transport=registry)
    await apply_gc(client, await plan_gc(config, catalog, state, client, 1), state)
    assert registry.tags["pinned-arm64"] == keys["1"][1]["arm64"]
    assert keys["1"][0] in registry.manifests and keys["2"][0] not in registry.manifests
    await state.close()


async def test_keys_this_host_never_built_rank_by_their_index_annotations(setup: tuple[
        Path, ScriptedRegistry, dict[str, tuple[str, dict[str, str]]]]) -> None:
    config_path, registry, _ = setup
    config, catalog = load(config_path)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    state = AsyncStateStore(StateStore(config.state_dir / "state.db"), inline=True)
    client = RegistryClient(transport=registry)
    plan = await plan_gc(config, catalog, state, client, 1)
    kept = {k.tag for k in plan.keep}
    assert kept == {f"bk-{key('3')}"}, plan.render()  # the newest by created, not by name
    await state.close()


async def test_a_human_tag_added_between_plan_and_apply_keeps_its_image(setup: tuple[
        Path, ScriptedRegistry, dict[str, tuple[str, dict[str, str]]]]) -> None:
    """gc re-checks the human tags right before each DELETE (which would take
    the tag along), not only what the hierarchy stands on."""
    config_path, registry, keys = setup
    config, catalog = load(config_path)
    _, state = _state(config_path, keys, current="3")
    client = RegistryClient(transport=registry)
    plan = await plan_gc(config, catalog, state, client, 1)
    assert keys["1"][0] in {k.digest for k in plan.delete}
    registry.tags["release-2024"] = keys["1"][0]  # tagged by hand meanwhile
    await apply_gc(client, plan, state)
    assert registry.tags["release-2024"] == keys["1"][0] and keys["1"][0] in registry.manifests
    assert keys["2"][0] not in registry.manifests
    await state.close()


async def test_a_platform_image_whose_key_never_came_is_collected(setup: tuple[
        Path, ScriptedRegistry, dict[str, tuple[str, dict[str, str]]]]) -> None:
    """An engine pushed bk-<key>-linux-amd64, then publishing failed: no key tag
    ever names it. gc removes it, unless a human tag or the hierarchy uses it."""
    config_path, registry, keys = setup
    config, catalog = load(config_path)
    _, state = _state(config_path, keys, current="3")
    orphan = registry.image(9, "2025-02-01T00:00:00Z", "amd64")
    registry.tags[f"bk-{key('9')}-linux-amd64"] = orphan
    kept = registry.image(10, "2025-02-01T00:00:00Z", "arm64")
    registry.tags[f"bk-{key('8')}-linux-arm64"] = kept
    registry.tags["hand-tagged"] = kept
    client = RegistryClient(transport=registry)
    plan = await plan_gc(config, catalog, state, client, 1)
    assert orphan in {k.digest for k in plan.delete} and kept not in {k.digest for k in
                                                                      plan.delete}
    await apply_gc(client, plan, state)
    assert orphan not in registry.manifests and kept in registry.manifests
    await state.close()
