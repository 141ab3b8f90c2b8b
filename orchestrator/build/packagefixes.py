"""Which package fixes each layer has now, and which indexes are worth polling for them.

The fix decision itself is pure (``core.packagefix``); this module feeds it: the
package record of each layer's current image (``packages.db``, written when the
image was attested), the index sources those images name, and the index states
last polled (``packages.db`` too). The daemon's package watch keeps them
current; a one-shot ``plan`` or ``build`` reads them as the daemon last left
them, and never polls.

What the key says (``Inputs.packages``): the fixed versions a layer was rebuilt
against (``core.packagefix.key_pins``). A fix is *pending* for a layer while its
key does not cover it yet; one its key covers but its image still lacks was
*not applied* (``fix_not_applied``), and stays so, without another rebuild,
until the index offers a newer version (a new pin, so a new key).
"""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.build.packagestore import PACKAGES_DB, PackageStore
from orchestrator.build.state import AsyncStateStore, LayerRecord
from orchestrator.catalog.layers import dockerfile_texts
from orchestrator.core.errors import InputError
from orchestrator.core.model import Catalog, Config, PackagesConfig
from orchestrator.core.packagefix import (
    RETRY,
    WATCHED_ECOSYSTEMS,
    Fix,
    FixPolicy,
    FixReport,
    LayerPackages,
    covered,
    describe,
    find_fixes,
    upgrade_hint,
    upgrades_packages,
)
from orchestrator.core.packages import PackageRecord
from orchestrator.core.pkgindex import IndexSnapshot
from orchestrator.core.pkgsources import ApkRepository, IndexSource, image_sources
from orchestrator.core.provenance import PackageIndex
from orchestrator.core.redact import public_url

UPSTREAM = "upstream:"


def policy_of(config: PackagesConfig) -> FixPolicy:
    return FixPolicy(config.only, config.window_s, config.urgent)


@dataclass(frozen=True)
class Watched:
    """One index worth polling: the packages asked about and the architectures."""

    source: IndexSource
    names: frozenset[str]
    arches: frozenset[str]
    layers: frozenset[str]  # the layers whose images name it


@dataclass(frozen=True)
class FixView:
    """Every layer's fixes now, as the decide step and the views read them."""

    report: FixReport = field(default_factory=FixReport)
    snapshots: Mapping[str, IndexSnapshot] = field(default_factory=dict)
    pins: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    layers: Mapping[str, LayerPackages] = field(default_factory=dict)
    # Per layer, fixes not applied to try again against a changed index (retry_pin).
    retries: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    # Layers whose pending fixes a build takes in now (the daemon: those whose window
    # closed); None: every layer (a one-shot plan or build, which has no window).
    released: frozenset[str] | None = None

    def takes(self, layer: str) -> bool:
        """Whether a build of ``layer`` now pins its pending fixes. One still in its
        window waits, unless the layer builds anyway for another reason: a run that
        only stands on it (a child's edit) does not rebuild it early."""
        return self.released is None or layer in self.released

    def pending(self, layer: str, pins: tuple[tuple[str, str], ...] | None = None
                ) -> tuple[Fix, ...]:
        """What the layer's next build takes in: fixes its key (``pins``: by default
        its record's) does not cover yet, and fixes to try again."""
        have = self.pins.get(layer, ()) if pins is None else pins
        again = {name for name, snapshot in self.retries.get(layer, ())
                 if (name, snapshot) not in have}
        return tuple(f for f in self.report.fixes.get(layer, ())
                     if not covered(f, have) or RETRY + f.pin[0] in again)

    def not_applied(self, layer: str) -> tuple[Fix, ...]:
        """Fixes the layer's key covers but its image lacks (and not being tried again)."""
        pins, due = self.pins.get(layer, ()), self.pending(layer)
        return tuple(f for f in self.report.fixes.get(layer, ())
                     if covered(f, pins) and f not in due)

    def pending_layers(self) -> dict[str, tuple[Fix, ...]]:
        return {layer: found for layer in self.report.fixes if (found := self.pending(layer))}

    def indexes(self, fixes: Iterable[Fix]) -> list[PackageIndex]:
        """The index snapshots that offered ``fixes``, for the provenance, each with the
        fixes it offered."""
        by_index: dict[str, list[str]] = {}
        for fix in fixes:
            advisories = f" ({', '.join(fix.advisories)})" if fix.advisories else ""
            by_index.setdefault(fix.index, []).append(
                f"{fix.package.name} {fix.package.version} -> {fix.version}{advisories}")
        out = []
        for index, lines in sorted(by_index.items()):
            snapshot = self.snapshots.get(index)
            if snapshot is not None:
                out.append(PackageIndex(snapshot.suite, snapshot.url, snapshot.digest,
                                        snapshot.date, tuple(sorted(set(lines)))))
        return out


def fix_view(config: PackagesConfig, catalog: Catalog, records: Mapping[str, LayerRecord],
             images: Mapping[str, Sequence[PackageRecord]],
             snapshots: Mapping[str, IndexSnapshot], dockerfiles: Mapping[str, str]
             ) -> FixView:
    """``records``: each layer's record (its key's inputs carry the pins); ``images``:
    the package records of each layer's current image (one per platform)."""
    layers = layer_packages(catalog, images, dockerfiles)
    report = find_fixes(layers.values(), snapshots, policy_of(config))
    pins = {lid: record.inputs.packages for lid, record in records.items()}
    return FixView(report, dict(snapshots), pins, layers)


def layer_packages(catalog: Catalog, images: Mapping[str, Sequence[PackageRecord]],
                   dockerfiles: Mapping[str, str]) -> dict[str, LayerPackages]:
    """What the fix decision knows of each layer that has a package record."""
    out: dict[str, LayerPackages] = {}
    for lid, found in images.items():
        layer = catalog.layers.get(lid)
        if layer is None or not found:
            continue
        parent = layer.parent or (UPSTREAM + layer.upstream if layer.upstream else "")
        packages = [p for record in found for p in record.installed()]
        sources = {s.id for record in found for s in image_sources(record.texts())[0]}
        out[lid] = LayerPackages(lid, parent, packages, sources,
                                 upgrades=upgrades_packages(dockerfiles.get(lid, "")),
                                 opted_out=not layer.rebuild_packages)
    return out


def watched(config: PackagesConfig, images: Mapping[str, Sequence[PackageRecord]],
            layers: Mapping[str, LayerPackages]) -> dict[str, Watched]:
    """The indexes worth polling: those the layers' images name that could offer a fix
    for a package one of those layers installed (or, on an upstream, stands on).
    With ``only = "security"`` and no advisory feed, only security suites can."""
    sources: dict[str, IndexSource] = {}
    names: dict[str, set[str]] = {}
    arches: dict[str, set[str]] = {}
    users: dict[str, set[str]] = {}
    security_only = config.only == "security" and not config.feeds
    for lid, found in images.items():
        info = layers.get(lid)
        if info is None:
            continue
        relevant = [p for p in info.packages if p.ecosystem in WATCHED_ECOSYSTEMS and (
            p.installed_by == lid or (p.installed_by.startswith(UPSTREAM) and
                                      p.installed_by == info.parent))]
        for record in found:
            for source in image_sources(record.texts())[0]:
                if not source.pollable or (security_only and not source.security):
                    continue
                eco = "apk" if isinstance(source, ApkRepository) else "deb"
                wanted = {p.name for p in relevant if p.ecosystem == eco}
                if not wanted:
                    continue
                sources.setdefault(source.id, source)
                names.setdefault(source.id, set()).update(wanted)
                users.setdefault(source.id, set()).add(lid)
                arches.setdefault(source.id, set()).update(
                    p.arch for p in relevant
                    if p.ecosystem == eco and p.arch and p.arch not in ("all", "noarch"))
    return {sid: Watched(source, frozenset(names[sid]), frozenset(arches[sid]),
                         frozenset(users[sid])) for sid, source in sorted(sources.items())}


def on_loopback(source: IndexSource) -> bool:
    """A mirror on this host (127.0.0.0/8, ::1, localhost): it may be polled as often
    as asked; any other is polled at most once a minute."""
    url = source.uri if not isinstance(source, ApkRepository) else source.url
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan_notes(view: FixView, catalog: Catalog) -> list[dict[str, Any]]:
    """What ``plan`` lists: each layer's pending fixes and what they would rebuild,
    fixes not applied, and fixes waiting on an upstream's refresh."""
    from orchestrator.core import graph

    parents = {lid: layer.parent for lid, layer in catalog.layers.items()}
    out: list[dict[str, Any]] = []
    for lid, fixes in sorted(view.pending_layers().items()):
        below = [d for d in catalog.layers if d in graph.descendants(parents, [lid])]
        out.append({"kind": "pending", "layer": lid, "reason": "package fix: " +
                    describe(fixes), "fixes": [fix_json(f) for f in fixes],
                    "rebuilds": below if lid in below else [lid, *below]})
    for lid in sorted(view.report.fixes):
        stuck = view.not_applied(lid)
        if stuck:
            out.append({"kind": "not_applied", "layer": lid,
                        "fixes": [fix_json(f) for f in stuck]})
    for waiting in view.report.waiting:
        out.append({"kind": "waiting", "layer": waiting.fix.layer,
                    "layers": list(waiting.layers), "reason": waiting.fix.reason(),
                    "hint": upgrade_hint(waiting.fix.package.ecosystem),
                    "fixes": [fix_json(waiting.fix)]})
    return out


def render_notes(notes: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for note in notes:
        if note["kind"] == "pending":
            lines.append(f"{note['reason']} (layer {note['layer']}): rebuilds "
                         f"{', '.join(note['rebuilds'])}")
        elif note["kind"] == "not_applied":
            names = ", ".join(f"{f['package']} {f['version']}" for f in note["fixes"])
            lines.append(f"fix not applied in {note['layer']}: {names} (its build key "
                         "covers it; rebuilt when the index offers a newer version)")
        else:
            lines.append(f"{note['reason']}: installed by {note['layer']}, waiting on its "
                         f"refresh; {', '.join(note['layers'])} could upgrade packages "
                         f"itself ({note['hint']})")
    return lines


def fix_json(fix: Fix) -> dict[str, Any]:
    # The index id is the URL the image's sources wrote: a mirror's user:password@ too.
    return {"package": fix.package.name, "installed": fix.package.version,
            "version": fix.version, "suite": fix.suite, "index": public_url(fix.index),
            "snapshot": fix.snapshot, "advisories": list(fix.advisories),
            "severity": fix.severity, "installed_by": fix.package.installed_by}


# --- reading what packages.db holds ------------------------------------------------------


def image_digests(record: LayerRecord) -> list[str]:
    """The images a layer record names: each platform's manifest, or the one image."""
    return list(record.platform_digests.values()) or [record.digest]


def read_images(store: PackageStore, records: Mapping[str, LayerRecord],
                cache: dict[str, PackageRecord] | None = None
                ) -> dict[str, list[PackageRecord]]:
    """Blocking. The kept package record of each layer's current image(s). ``cache``
    (by image digest: a record never changes) is used and left holding exactly these."""
    out: dict[str, list[PackageRecord]] = {}
    kept = dict(cache or {})
    if cache is not None:
        cache.clear()
    for lid, record in records.items():
        found = []
        for digest in image_digests(record):
            known = kept.get(digest) or store.record(digest)
            if known is not None:
                found.append(known)
                if cache is not None:
                    cache[digest] = known
        if found:
            out[lid] = found
    return out


def read_snapshots(store: PackageStore) -> dict[str, IndexSnapshot]:
    """Blocking. Every index state kept, as the snapshot it last read."""
    from orchestrator.registry.indexwatch import IndexState

    out: dict[str, IndexSnapshot] = {}
    for source, text in store.index_states().items():
        try:
            snapshot = IndexState.from_json(text).snapshot()
        except (ValueError, TypeError, KeyError):
            continue  # a state this version cannot read: the next poll writes it again
        if snapshot is not None:
            out[source] = snapshot
    return out


async def load_fix_view(config: Config, catalog: Catalog, state: AsyncStateStore
                        ) -> FixView | None:
    """For a one-shot plan or build: the fixes as the daemon's polls last left them;
    None when ``[packages]`` is off or nothing was ever polled."""
    if config.packages is None or not (config.state_dir / PACKAGES_DB).exists():
        return None
    records = await state.records.all(list(catalog.layers))
    try:
        texts = dockerfile_texts(catalog)
    except InputError:
        texts = {}

    def read() -> tuple[dict[str, list[PackageRecord]], dict[str, IndexSnapshot]]:
        store = PackageStore(config.state_dir / PACKAGES_DB, config.daemon.socket_group)
        return read_images(store, records), read_snapshots(store)

    images, snapshots = await asyncio.to_thread(read)
    if not snapshots:
        return None
    return fix_view(config.packages, catalog, records, images, snapshots, texts)


def upgrade_hints(config: Config, catalog: Catalog) -> list[str]:
    """``lint`` warnings: fixes for packages an upstream installed wait on its refresh
    in layers that do not upgrade packages; each says the step that takes them now."""
    from orchestrator.build.runs import STATE_DB
    from orchestrator.build.state import StateStore
    from orchestrator.catalog.tomlfile import display

    if config.packages is None or not (config.state_dir / STATE_DB).exists():
        return []

    async def read() -> FixView | None:
        state = AsyncStateStore(StateStore(config.state_dir / STATE_DB), inline=True)
        try:
            return await load_fix_view(config, catalog, state)
        finally:
            await state.close()

    view = asyncio.run(read())
    if view is None:
        return []
    by_layer: dict[str, list[Fix]] = {}
    for waiting in view.report.waiting:
        for lid in waiting.layers:
            by_layer.setdefault(lid, []).append(waiting.fix)
    out = []
    for lid, fixes in sorted(by_layer.items()):
        layer = catalog.layers[lid]
        owner = fixes[0].layer
        out.append(f"{display(layer.dockerfile)}:1: warning: {len(fixes)} package fix(es) for "
                   f"what {owner} installed wait on its refresh (package fix: "
                   f"{describe(fixes)}); to take them now, add "
                   f"`{upgrade_hint(fixes[0].package.ecosystem)}` [package-upgrade]")
    return out
