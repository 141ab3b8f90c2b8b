"""Which layers have which package fixes, whether a rebuild applied them, and what the
build key records about them. Pure.

The rule (DESIGN §2b): a package belongs to the layer that installed its version
(``core.packages``). When a watched index offers a fixed version of it, that layer
is stale; a layer that only inherits the package is not (its ancestor is). A
package the upstream base installed belongs to the upstream: our first layers on
that upstream are rebuilt for its fix only when their Dockerfile upgrades
packages; otherwise the fix waits on the upstream's refresh.

"Fixed" follows ``[packages] only``: ``"security"`` takes a newer version from a
security suite (``bookworm-security``) or one that an advisory names as the fix;
``"all"`` any newer version. Versions compare by each distribution's own rules
(``core.pkgversion``). Only indexes the layer's own image names are consulted.

Either way, only a version apt would upgrade to by itself is a fix: a suite whose
Release says ``NotAutomatic`` (experimental, backports) offers none, except with
``ButAutomaticUpgrades`` (backports) for a package installed from that suite, and a
suite of apt's default priority wins over a newer version from one of lower
priority (apt_preferences(5)). dpkg does not record where a version came from:
the suite that offers exactly the installed version says so; where none does, the
package is not taken as installed from backports (apt would upgrade it, as its
installed version's priority ties; we do not guess).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.core.packages import InstalledPackage
from orchestrator.core.pkgindex import (
    PRIORITY_BUT_AUTOMATIC_UPGRADES,
    PRIORITY_DEFAULT,
    IndexEntry,
    IndexSnapshot,
)
from orchestrator.core.pkgversion import comparable, compare

UPSTREAM = "upstream:"
_INSTALLED_PRIORITY = PRIORITY_BUT_AUTOMATIC_UPGRADES  # apt: the version dpkg's status lists
SEVERITIES = ("unknown", "negligible", "low", "medium", "high", "critical")
WATCHED_ECOSYSTEMS = ("deb", "apk")


@dataclass(frozen=True)
class FixPolicy:
    """``[packages]``: which versions count as fixes, and how rebuilds are grouped."""

    only: Literal["security", "all"] = "security"
    window_s: float = 3600.0  # fixes within this time make one rebuild per layer
    urgent: tuple[str, ...] = ("critical",)  # severities that skip the window


@dataclass(frozen=True)
class Advisory:
    """A named fix from a feed (DSA-…, CVE-…): the source package and first fixed version."""

    id: str
    ecosystem: str  # "deb", "apk"
    package: str  # the source package (Debian and Alpine advisories name sources)
    fixed: str
    severity: str | None = None
    release: str | None = None  # "bookworm", "v3.20": where it applies; None: anywhere


@dataclass(frozen=True)
class LayerPackages:
    """What the decision knows of one layer (one image of it)."""

    layer: str  # the layer id
    parent: str  # the parent layer id, or "upstream:NAME"
    packages: Sequence[InstalledPackage]  # its image's packages, with who installed each
    sources: Collection[str]  # ids of the indexes its image names (IndexSource.id)
    upgrades: bool = False  # its Dockerfile upgrades packages (upgrades_packages)
    opted_out: bool = False  # [rebuild] packages = false


@dataclass(frozen=True)
class Fix:
    layer: str  # what rebuilds for it; "upstream:NAME" for a fix waiting on an upstream
    package: InstalledPackage
    version: str  # the fixed version offered
    suite: str
    index: str  # the offering index's id
    snapshot: str  # its snapshot's digest (provenance names it)
    advisories: tuple[str, ...] = ()
    severity: str | None = None

    @property
    def pin(self) -> tuple[str, str]:
        """What the build key records for this fix (see ``key_pins``)."""
        p = self.package
        return (f"{p.ecosystem}:{p.name}:{p.arch or ''}", self.version)

    def reason(self) -> str:
        """``package fix: openssl 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1 (bookworm-security,
        DSA-5678-1)``"""
        where = ", ".join((self.suite, *self.advisories))
        return (f"package fix: {self.package.name} {self.package.version} -> {self.version} "
                f"({where})")


@dataclass(frozen=True)
class Waiting:
    """A fix for a package the upstream base installed, which none of our first layers
    on it picks up (none upgrades packages): it waits on the upstream's refresh."""

    fix: Fix
    layers: tuple[str, ...]  # our first layers on that upstream

    def describe(self) -> str:
        return (f"{self.fix.reason()}: installed by {self.fix.layer}, waiting on its "
                f"refresh; {', '.join(self.layers)} could upgrade packages itself "
                f"({upgrade_hint(self.fix.package.ecosystem)})")


@dataclass(frozen=True)
class FixReport:
    fixes: Mapping[str, tuple[Fix, ...]] = field(default_factory=dict)  # stale layers
    waiting: tuple[Waiting, ...] = ()
    opted_out: Mapping[str, tuple[Fix, ...]] = field(default_factory=dict)

    def stale(self) -> set[str]:
        return set(self.fixes)

    def reason(self, layer: str) -> str:
        return "package fix: " + describe(self.fixes[layer])

    def urgent(self, policy: FixPolicy) -> set[str]:
        return {layer for layer, found in self.fixes.items()
                if any(f.severity in policy.urgent for f in found)}


def describe(fixes: Sequence[Fix]) -> str:
    """What a cause line says after ``package fix: ``: the first (most severe) fix,
    and how many more."""
    more = f" (and {len(fixes) - 1} more)" if len(fixes) > 1 else ""
    return fixes[0].reason().removeprefix("package fix: ") + more


def covered(fix: Fix, pins: Iterable[tuple[str, str]]) -> bool:
    """Whether a build keyed with ``pins`` was already built against ``fix`` (or a
    newer version of its package)."""
    name, version = fix.pin
    pinned = dict(pins).get(name)
    return pinned is not None and compare(fix.package.ecosystem, pinned, version) >= 0


RETRY = "retry:"


def retry_pin(fix: Fix, snapshot: str) -> tuple[str, str]:
    """The key's entry for building again against a fix that a build under the same
    package pin did not take (a mirror that lagged): the index snapshot it is tried
    against now. ``("retry:deb:libssl3:amd64", "sha256:…")``."""
    return (RETRY + fix.pin[0], snapshot)


def pending(fixes: Iterable[Fix], pins: Iterable[tuple[str, str]]) -> tuple[Fix, ...]:
    """The fixes a layer's next build would take in: those its key does not cover yet.
    A fix it covers but the image lacks was not applied (``check_applied``)."""
    kept = tuple(pins)
    return tuple(f for f in fixes if not covered(f, kept))


def find_fixes(layers: Iterable[LayerPackages], snapshots: Mapping[str, IndexSnapshot],
               policy: FixPolicy, advisories: Iterable[Advisory] = ()) -> FixReport:
    """Which layers have fixes for the packages they installed (``snapshots`` by index
    id, the current state of each watched index)."""
    by_source: dict[tuple[str, str], list[Advisory]] = {}
    for advisory in advisories:
        by_source.setdefault((advisory.ecosystem, advisory.package), []).append(advisory)
    stale: dict[str, list[Fix]] = {}
    skipped: dict[str, list[Fix]] = {}
    waiting: dict[tuple[str, str, str, str], tuple[Fix, list[str]]] = {}
    for layer in layers:
        offered = [snapshots[s] for s in sorted(layer.sources) if s in snapshots]
        for package in layer.packages:
            if package.ecosystem not in WATCHED_ECOSYSTEMS:
                continue
            own = package.installed_by == layer.layer
            upstreams = package.installed_by.startswith(UPSTREAM) and \
                package.installed_by == layer.parent
            if not own and not upstreams:
                continue  # inherited from one of our layers: that layer's fix
            fix = best_fix(package, offered, policy,
                           by_source.get((package.ecosystem, package.source_name), ()))
            if fix is None:
                continue
            if own or layer.upgrades:
                target = skipped if layer.opted_out else stale
                target.setdefault(layer.layer, []).append(_for(fix, layer.layer))
            else:
                key = (package.installed_by, *package.key)
                kept = waiting.setdefault(key, (_for(fix, package.installed_by), []))
                kept[1].append(layer.layer)
    return FixReport(
        {k: tuple(sorted(v, key=_order)) for k, v in sorted(stale.items())},
        tuple(Waiting(f, tuple(sorted(set(ls)))) for f, ls in
              sorted(waiting.values(), key=lambda w: _order(w[0]))),
        {k: tuple(sorted(v, key=_order)) for k, v in sorted(skipped.items())})


def _for(fix: Fix, layer: str) -> Fix:
    return Fix(layer, fix.package, fix.version, fix.suite, fix.index, fix.snapshot,
               fix.advisories, fix.severity)


def _order(fix: Fix) -> tuple[int, str]:
    # The most severe first, then by name: what a reason line shows.
    rank = SEVERITIES.index(fix.severity) if fix.severity in SEVERITIES else 0
    return (-rank, fix.package.name)


def best_fix(package: InstalledPackage, snapshots: Iterable[IndexSnapshot], policy: FixPolicy,
             advisories: Iterable[Advisory] = ()) -> Fix | None:
    """The newest version the indexes offer for ``package`` that counts as a fix, or None.
    Where several indexes offer it, a security suite is named."""
    eco = package.ecosystem
    if not comparable(eco, package.version):
        return None  # a hand-written package database: nothing to order it against
    applying = [a for a in advisories if comparable(eco, a.fixed)
                and compare(eco, a.fixed, package.version) > 0]  # the installed one is affected
    offered = [s for s in snapshots if s.ecosystem == eco]
    came_from = [s for s in offered if _offers(s, package.name, package.version, package.arch)]
    best: tuple[IndexEntry, IndexSnapshot] | None = None
    for snapshot in offered:
        if not _upgrades_from(snapshot, came_from):
            continue
        for entry in snapshot.entries.get(package.name, ()):
            if not _same_arch(entry.arch, package.arch):
                continue
            # What the index says is not trusted to be a version: one it garbles is
            # no fix, and must not stop the decision for every other package.
            if not comparable(eco, entry.version) or \
                    compare(eco, entry.version, package.version) <= 0:
                continue
            advised = any(compare(eco, entry.version, a.fixed) >= 0 for a in applying)
            if policy.only == "security" and not snapshot.security and not advised:
                continue
            if best is None or _better(eco, (entry, snapshot), best):
                best = (entry, snapshot)
    if best is None:
        return None
    entry, snapshot = best
    named = [a for a in applying if compare(eco, entry.version, a.fixed) >= 0]
    severity = max((a.severity for a in named if a.severity in SEVERITIES),
                   key=lambda s: SEVERITIES.index(s or "unknown"), default=None)
    return Fix(package.installed_by, package, entry.version, snapshot.suite, snapshot.source,
               snapshot.digest, tuple(sorted({a.id for a in named})), severity)


def _offers(snapshot: IndexSnapshot, name: str, version: str, arch: str | None) -> bool:
    return any(e.version == version and _same_arch(e.arch, arch)
               for e in snapshot.entries.get(name, ()))


def _upgrades_from(snapshot: IndexSnapshot, came_from: Sequence[IndexSnapshot]) -> bool:
    """Whether apt would upgrade to a newer version ``snapshot`` offers, by itself: its
    versions' priority is at least the installed version's (100 from dpkg's status,
    or more from a suite that offers it too: ``came_from``). A NotAutomatic suite's 1
    never is; a ButAutomaticUpgrades suite's 100 only where the indexes show the
    installed version came from that suite itself (see the module's note)."""
    installed = max([_INSTALLED_PRIORITY, *(s.priority for s in came_from)])
    if snapshot.priority < installed:
        return False
    return snapshot.priority >= PRIORITY_DEFAULT or \
        any(s.source == snapshot.source for s in came_from)


def _better(eco: str, new: tuple[IndexEntry, IndexSnapshot],
            old: tuple[IndexEntry, IndexSnapshot]) -> bool:
    # apt's candidate: the highest priority, then the newest version.
    if new[1].priority != old[1].priority:
        return new[1].priority > old[1].priority
    order = compare(eco, new[0].version, old[0].version)
    return order > 0 or (order == 0 and new[1].security and not old[1].security)


def _same_arch(offered: str | None, installed: str | None) -> bool:
    return offered is None or installed is None or offered == installed or \
        offered in ("all", "noarch")


def origins(packages: Iterable[InstalledPackage], snapshots: Iterable[IndexSnapshot]
            ) -> dict[tuple[str, str, str], str]:
    """Where each installed version came from, where an index says so: the suite that
    offers exactly that version (a security suite first), by ``InstalledPackage.key``.
    dpkg and apk do not record it; the indexes the image names do."""
    offered = list(snapshots)
    out: dict[tuple[str, str, str], str] = {}
    for package in packages:
        found = [s for s in offered if s.ecosystem == package.ecosystem and
                 _offers(s, package.name, package.version, package.arch)]
        if found:
            out[package.key] = sorted(found, key=lambda s: (not s.security, s.suite))[0].suite
    return out


# --- window --------------------------------------------------------------------------------


def rebuild_due(first_seen: float, now: float, fixes: Iterable[Fix], policy: FixPolicy) -> bool:
    """Fixes seen within ``window`` of the first make one rebuild; an urgent one goes now."""
    return now - first_seen >= policy.window_s or \
        any(f.severity in policy.urgent for f in fixes)


# --- after the rebuild ---------------------------------------------------------------------


@dataclass(frozen=True)
class NotApplied:
    """``fix_not_applied``: the rebuilt image still lacks a fix it was rebuilt for."""

    fix: Fix
    found: str  # the version the new image has
    reason: str
    # Another build may take it (a mirror that lagged): tried again when the index
    # changes. A pin or a hold is not: only a newer version (a new key) tries again.
    retryable: bool = False

    def describe(self) -> str:
        return (f"fix_not_applied: {self.fix.package.name} is {self.found}, not "
                f"{self.fix.version} ({self.fix.suite}): {self.reason}")


def check_applied(fixes: Iterable[Fix], packages: Iterable[InstalledPackage], *,
                  held: Collection[str] = (),
                  texts: Mapping[str, str | None] | None = None,
                  dockerfile: str | None = None) -> list[NotApplied]:
    """The fixes the new image (``packages``, with ``held``/``texts`` from its record)
    does not have. A package that is gone counts as fixed: nothing vulnerable is left.
    ``dockerfile``: the layer's, whose ``apt-get install NAME=VERSION`` pins count too."""
    installed = {p.key: p for p in packages}
    pins = {**dockerfile_pins(dockerfile or ""), **pinned_packages(texts or {})}
    out = []
    for fix in fixes:
        now = installed.get(fix.package.key)
        if now is None or compare(fix.package.ecosystem, now.version, fix.version) >= 0:
            continue
        name = fix.package.name
        if name in held:
            reason = "held (apt-mark hold): apt does not upgrade it"
        elif name in pins:
            reason = f"its version is pinned in {pins[name]}"
        elif now.version == fix.package.version:
            reason = ("the build installed the same version: the mirror it used may lag "
                      "behind the index, or the Dockerfile pins the version")
        else:
            reason = "the build installed a newer version, but not the fixed one"
        out.append(NotApplied(fix, now.version, reason,
                              retryable=name not in held and name not in pins))
    return out


_INSTALL = re.compile(r"\b(?:apt-get|apt|aptitude)\s+(?:-\S+\s+)*install\b(?P<args>[^;&|\n]*)"
                      r"|\bapk\s+(?:-\S+\s+)*add\b(?P<apk>[^;&|\n]*)")
_APT_PIN = re.compile(r"^([a-z0-9][a-z0-9+.-]+)(?::[a-z0-9-]+)?=\S+$")
_APK_PIN = re.compile(r"^([^=<>~@\s-][^=<>~@\s]*)(?:@\S+)?(?:[=<>~]|><)\S+$")


def dockerfile_pins(dockerfile: str) -> dict[str, str]:
    """Package name -> "the Dockerfile" for each package an install command pins to a
    version: ``apt-get install -y NAME=VERSION``, ``apk add NAME=VERSION``."""
    text = dockerfile.replace("\\\n", " ")
    out: dict[str, str] = {}
    for match in _INSTALL.finditer(text):
        apt, apk = match["args"], match["apk"]
        for word in (apt if apt is not None else apk or "").split():
            word = word.strip("'\"")
            found = (_APT_PIN if apt is not None else _APK_PIN).match(word)
            if found is not None:
                out.setdefault(found[1], f"the Dockerfile ({word})")
    return out


_APK_CONSTRAINT = re.compile(r"^([^=<>~@\s]+)(?:@\S+)?\s*(?:[=<>~]|><)")


def pinned_packages(texts: Mapping[str, str | None]) -> dict[str, str]:
    """Package name -> the file that pins its version: ``/etc/apk/world`` entries with a
    version constraint, ``Pin: version`` stanzas of apt's preferences."""
    out: dict[str, str] = {}
    for path, text in sorted(texts.items()):
        if text is None:
            continue
        if path == "etc/apk/world":
            for word in text.split():
                if (match := _APK_CONSTRAINT.match(word)) is not None:
                    out.setdefault(match[1], "/" + path)
        elif path == "etc/apt/preferences" or path.startswith("etc/apt/preferences.d/"):
            for block in re.split(r"\n\s*\n", text):
                fields = dict(line.split(":", 1) for line in block.splitlines()
                              if ":" in line and not line.startswith(("#", " ")))
                fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
                if fields.get("pin", "").startswith("version"):
                    for name in fields.get("package", "").split():
                        out.setdefault(name, "/" + path)
    return out


# --- the Dockerfile and the key ------------------------------------------------------------

_UPGRADE = re.compile(
    r"\b(?:apt-get|apt|aptitude)\s+(?:-\S+\s+)*(?:upgrade|dist-upgrade|full-upgrade)\b"
    r"|\bapk\s+(?:-\S+\s+)*upgrade\b"
    r"|\bapk\s+(?:-\S+\s+)*add\s+(?:\S+\s+)*?(?:-u|--upgrade)\b")


def upgrades_packages(dockerfile: str) -> bool:
    """Whether a Dockerfile upgrades the packages it stands on (``apt-get upgrade``,
    ``apk upgrade``, ``apk add --upgrade``). Comments are ignored; line continuations
    and heredocs are read as they are written."""
    text = "\n".join(line for line in dockerfile.splitlines()
                     if not line.lstrip().startswith("#"))
    return _UPGRADE.search(text.replace("\\\n", " ")) is not None


def upgrade_hint(ecosystem: str) -> str:
    if ecosystem == "apk":
        return "RUN apk upgrade --no-cache"
    return ("RUN apt-get update && apt-get upgrade -y && rm -rf /var/lib/apt/lists/*")


def key_pins(previous: Iterable[tuple[str, str]], fixes: Iterable[Fix], *,
             other_inputs_changed: bool) -> tuple[tuple[str, str], ...]:
    """The build key's ``packages`` input for a layer's next build.

    Each entry is ``("deb:libssl3:amd64", "3.0.16-1~deb12u1")``: a fixed version the
    layer is (re)built against. Entries accumulate while the layer's other inputs stay
    the same, so the key changes exactly when a new fix is taken in, and stays the same
    after the rebuild (the fix no longer pending, its pin kept): an image under a key
    is what that key's fixes made. Any other change to the inputs starts afresh (that
    build takes what the indexes offer anyway; pending fixes are pinned again)."""
    pins = {} if other_inputs_changed else dict(previous)
    for fix in fixes:
        name, version = fix.pin
        known = pins.get(name)
        if known is None or compare(fix.package.ecosystem, version, known) > 0:
            pins[name] = version
    return tuple(sorted(pins.items()))
