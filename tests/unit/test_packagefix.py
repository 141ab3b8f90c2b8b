"""The fix decision: which layer rebuilds for which package fix, and whether it took."""

from __future__ import annotations

import dataclasses
import json
from typing import cast

import pytest

from orchestrator.core.packagefix import (
    Advisory,
    FixPolicy,
    LayerPackages,
    NotApplied,
    check_applied,
    find_fixes,
    key_pins,
    rebuild_due,
    upgrades_packages,
)
from orchestrator.core.packages import InstalledPackage
from orchestrator.core.pkgindex import IndexEntry, IndexSnapshot

MAIN = "apt http://deb.debian.org/debian bookworm"
SECURITY = "apt http://deb.debian.org/debian-security bookworm-security"
STATUS = "/var/lib/dpkg/status"


def deb(name: str, version: str, by: str, arch: str = "amd64",
        source: str | None = None) -> InstalledPackage:
    return InstalledPackage("deb", name, version, arch, source, STATUS, by, "sha256:" + "0" * 64)


def index(source: str, suite: str, security: bool, **versions: str) -> IndexSnapshot:
    entries = {name.replace("_", "-"): (IndexEntry(name.replace("_", "-"), v, "amd64"),)
               for name, v in versions.items()}
    return IndexSnapshot(source, suite, security, "Sat, 29 Nov 2026 10:00:00 UTC",
                         "sha256:" + ("a" if security else "b") * 64, "http://x/InRelease",
                         entries)


SNAPSHOTS = {
    MAIN: index(MAIN, "bookworm", False, curl="7.88.1-10+deb12u8", libssl3="3.0.15-1~deb12u1"),
    SECURITY: index(SECURITY, "bookworm-security", True, curl="7.88.1-10+deb12u12",
                    libssl3="3.0.16-1~deb12u1", libexpat1="2.5.0-1+deb12u1"),
}
UPSTREAM_PKGS = [deb("libssl3", "3.0.15-1~deb12u1", "upstream:debian", source="openssl"),
                 deb("libc6", "2.36-9+deb12u10", "upstream:debian")]
OS_PKGS = [*UPSTREAM_PKGS, deb("curl", "7.88.1-10", "os")]
PYTHON_PKGS = [*OS_PKGS, deb("libexpat1", "2.5.0-1", "python")]


def chain(*, os_upgrades: bool = False, sources: tuple[str, ...] = (MAIN, SECURITY),
          opted_out: frozenset[str] = frozenset()) -> list[LayerPackages]:
    return [
        LayerPackages("os", "upstream:debian", OS_PKGS, sources, upgrades=os_upgrades,
                      opted_out="os" in opted_out),
        LayerPackages("python", "os", PYTHON_PKGS, sources, opted_out="python" in opted_out),
        LayerPackages("app", "python", [*PYTHON_PKGS, InstalledPackage(
            "pypi", "flask", "3.1.0", None, None, "/site", "app", "")], sources),
    ]


def test_the_layer_that_installed_a_package_rebuilds_for_its_fix() -> None:
    report = find_fixes(chain(), SNAPSHOTS, FixPolicy())
    assert report.stale() == {"os", "python"}  # app only inherits them
    [curl] = report.fixes["os"]
    assert curl.reason() == \
        "package fix: curl 7.88.1-10 -> 7.88.1-10+deb12u12 (bookworm-security)"
    assert (curl.index, curl.snapshot) == (SECURITY, "sha256:" + "a" * 64)
    assert report.reason("python") == \
        "package fix: libexpat1 2.5.0-1 -> 2.5.0-1+deb12u1 (bookworm-security)"


def test_the_upstreams_packages_wait_on_the_upstream_unless_a_first_layer_upgrades() -> None:
    report = find_fixes(chain(), SNAPSHOTS, FixPolicy())
    [waiting] = report.waiting
    assert (waiting.fix.layer, waiting.fix.package.name, waiting.layers) == \
        ("upstream:debian", "libssl3", ("os",))
    assert waiting.describe().startswith(
        "package fix: libssl3 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1 (bookworm-security): "
        "installed by upstream:debian, waiting on its refresh; os could upgrade packages "
        "itself (RUN apt-get update && apt-get upgrade -y")
    upgrading = find_fixes(chain(os_upgrades=True), SNAPSHOTS, FixPolicy())
    assert upgrading.waiting == ()
    assert sorted(f.package.name for f in upgrading.fixes["os"]) == ["curl", "libssl3"]
    assert "python" not in {f.layer for f in upgrading.fixes["os"]}


def test_only_security_ignores_point_releases_unless_an_advisory_names_them() -> None:
    main_only = chain(sources=(MAIN,))
    assert find_fixes(main_only, SNAPSHOTS, FixPolicy()).stale() == set()
    everything = find_fixes(main_only, SNAPSHOTS, FixPolicy(only="all"))
    assert [f.version for f in everything.fixes["os"]] == ["7.88.1-10+deb12u8"]
    advisory = Advisory("DSA-5999-1", "deb", "curl", "7.88.1-10+deb12u8", "high")
    named = find_fixes(main_only, SNAPSHOTS, FixPolicy(), [advisory])
    [fix] = named.fixes["os"]
    assert fix.reason() == \
        "package fix: curl 7.88.1-10 -> 7.88.1-10+deb12u8 (bookworm, DSA-5999-1)"
    assert fix.severity == "high"


def test_advisories_match_by_source_package_and_pick_the_severity() -> None:
    advisories = [Advisory("DSA-6000-1", "deb", "openssl", "3.0.16-1~deb12u1", "critical"),
                  Advisory("DSA-5000-1", "deb", "openssl", "3.0.10-1", "high")]  # long fixed
    report = find_fixes(chain(os_upgrades=True), SNAPSHOTS, FixPolicy(), advisories)
    libssl = next(f for f in report.fixes["os"] if f.package.name == "libssl3")
    assert (libssl.advisories, libssl.severity) == (("DSA-6000-1",), "critical")
    assert report.fixes["os"][0] is libssl  # the most severe first
    assert report.urgent(FixPolicy()) == {"os"}
    assert report.urgent(FixPolicy(urgent=())) == set()


def test_only_the_indexes_the_image_names_count() -> None:
    elsewhere = {"apt http://mirror.example/debian-security bookworm-security":
                 SNAPSHOTS[SECURITY]}
    assert find_fixes(chain(), elsewhere, FixPolicy()).stale() == set()


def test_an_opted_out_layer_is_listed_apart() -> None:
    report = find_fixes(chain(opted_out=frozenset({"os"})), SNAPSHOTS, FixPolicy())
    assert report.stale() == {"python"}
    assert [f.package.name for f in report.opted_out["os"]] == ["curl"]


def test_a_layer_that_changed_an_inherited_package_owns_that_version() -> None:
    # python upgraded curl itself: both its version and the parent's have a fix.
    python = [*OS_PKGS[:2], deb("curl", "7.88.1-10+deb12u1", "python")]
    report = find_fixes([LayerPackages("os", "upstream:debian", OS_PKGS, [SECURITY]),
                         LayerPackages("python", "os", python, [SECURITY])],
                        SNAPSHOTS, FixPolicy())
    assert {layer: [f.package.version for f in fixes]
            for layer, fixes in report.fixes.items()} == {
        "os": ["7.88.1-10"], "python": ["7.88.1-10+deb12u1"]}


def test_architectures_and_alpine_ordering() -> None:
    apk_source = "apk https://dl-cdn.alpinelinux.org/alpine/v3.20/main"
    apk = IndexSnapshot(apk_source, "v3.20/main", False, None, "sha256:" + "c" * 64, "u", {
        "libssl3": (IndexEntry("libssl3", "3.3.2-r0", "x86_64"),
                    IndexEntry("libssl3", "3.3.9-r0", "aarch64")),
        "ca-certificates-bundle": (IndexEntry("ca-certificates-bundle", "20241121-r1",
                                              "noarch"),)})
    installed = [InstalledPackage("apk", "libssl3", "3.3.1-r3", "x86_64", "openssl",
                                  "/lib/apk/db/installed", "os", ""),
                 InstalledPackage("apk", "ca-certificates-bundle", "20241121-r0", "x86_64",
                                  None, "/lib/apk/db/installed", "os", "")]
    layer = LayerPackages("os", "upstream:alpine", installed, [apk_source])
    report = find_fixes([layer], {apk_source: apk}, FixPolicy(only="all"))
    assert [(f.package.name, f.version) for f in report.fixes["os"]] == [
        ("ca-certificates-bundle", "20241121-r1"), ("libssl3", "3.3.2-r0")]
    # Alpine has no security suites: "security" needs an advisory.
    assert find_fixes([layer], {apk_source: apk}, FixPolicy()).stale() == set()


def test_a_window_groups_fixes_unless_one_is_urgent() -> None:
    fixes = find_fixes(chain(), SNAPSHOTS, FixPolicy()).fixes["os"]
    policy = FixPolicy(window_s=3600)
    assert not rebuild_due(1000.0, 1000.0 + 60, fixes, policy)
    assert rebuild_due(1000.0, 1000.0 + 3600, fixes, policy)
    urgent = find_fixes(chain(), SNAPSHOTS, FixPolicy(), [
        Advisory("DSA-1", "deb", "curl", "7.88.1-10+deb12u12", "critical")]).fixes["os"]
    assert rebuild_due(1000.0, 1000.0, urgent, policy)


# --- after the rebuild ---------------------------------------------------------------------


def test_fix_not_applied_says_why() -> None:
    [curl] = find_fixes(chain(), SNAPSHOTS, FixPolicy()).fixes["os"]

    def after(version: str | None, **kw: object) -> list[NotApplied]:
        packages = [deb("curl", version, "os")] if version else []
        return check_applied([curl], packages, **kw)  # type: ignore[arg-type]

    assert after("7.88.1-10+deb12u12") == []  # applied
    assert after("7.88.1-10+deb12u13") == []  # newer still
    assert after(None) == []  # removed: nothing vulnerable left
    [same] = after("7.88.1-10")
    assert same.describe() == (
        "fix_not_applied: curl is 7.88.1-10, not 7.88.1-10+deb12u12 (bookworm-security): "
        "the build installed the same version: the mirror it used may lag behind the index, "
        "or the Dockerfile pins the version")
    assert "held (apt-mark hold)" in after("7.88.1-10", held={"curl"})[0].reason
    assert after("7.88.1-10+deb12u9")[0].reason == \
        "the build installed a newer version, but not the fixed one"
    preferences = "Package: curl libcurl4\nPin: version 7.88.1-10\nPin-Priority: 1001\n"
    assert after("7.88.1-10", texts={"etc/apt/preferences.d/curl": preferences})[0].reason \
        == "its version is pinned in /etc/apt/preferences.d/curl"


def test_apk_world_pins() -> None:
    fix = find_fixes([LayerPackages("os", "upstream:alpine", [InstalledPackage(
        "apk", "curl", "8.9.0-r0", "x86_64", None, "/lib/apk/db/installed", "os", "")],
        ["apk r"])], {"apk r": IndexSnapshot("apk r", "v3.20/main", False, None, "d", "u", {
            "curl": (IndexEntry("curl", "8.9.1-r0", "x86_64"),)})},
        FixPolicy(only="all")).fixes["os"]
    still = [InstalledPackage("apk", "curl", "8.9.0-r0", "x86_64", None,
                              "/lib/apk/db/installed", "os", "")]
    [pinned] = check_applied(fix, still, texts={"etc/apk/world": "busybox curl=8.9.0-r0\n"})
    assert pinned.reason == "its version is pinned in /etc/apk/world"
    assert check_applied(fix, still, texts={"etc/apk/world": "curl\n"})[0].reason.startswith(
        "the build installed the same version")


@pytest.mark.parametrize(("dockerfile", "upgrades"), [
    ("FROM x\nRUN apt-get update && apt-get upgrade -y\n", True),
    ("FROM x\nRUN apt-get update \\\n && apt-get -y --no-install-recommends dist-upgrade\n",
     True),
    ("FROM x\nRUN apt full-upgrade -y\n", True),
    ("FROM x\nRUN apk upgrade --no-cache\n", True),
    ("FROM x\nRUN apk --no-cache upgrade\n", True),
    ("FROM x\nRUN apk add --no-cache --upgrade curl\n", True),
    ("FROM x\nRUN apt-get install -y curl\n", False),
    ("FROM x\n# RUN apt-get upgrade -y\nRUN true\n", False),
    ("FROM x\nRUN pip install --upgrade pip\n", False),
    ("FROM x\nRUN apk add --no-cache curl\n", False),
])
def test_which_dockerfiles_upgrade_packages(dockerfile: str, upgrades: bool) -> None:
    assert upgrades_packages(dockerfile) is upgrades


def test_key_pins_change_when_a_fix_is_taken_in_and_only_then() -> None:
    [curl] = find_fixes(chain(), SNAPSHOTS, FixPolicy()).fixes["os"]
    # Before any fix: no pins, so keys of layers never rebuilt for a fix do not change.
    assert key_pins((), (), other_inputs_changed=False) == ()
    first = key_pins((), [curl], other_inputs_changed=False)
    assert first == (("deb:curl:amd64", "7.88.1-10+deb12u12"),)
    # After the rebuild the fix is no longer pending; the pin stays: the same key.
    assert key_pins(first, (), other_inputs_changed=False) == first
    # Not applied (the mirror lags): still pending, the same pin, the same key: no loop.
    assert key_pins(first, [curl], other_inputs_changed=False) == first
    # A Dockerfile edit starts afresh.
    assert key_pins(first, (), other_inputs_changed=True) == ()
    # An older pending version never lowers a pin.
    assert key_pins((("deb:curl:amd64", "7.88.1-10+deb12u20"),), [curl],
                    other_inputs_changed=False) == (("deb:curl:amd64", "7.88.1-10+deb12u20"),)


def test_the_build_key_covers_the_pins_and_the_state_keeps_them() -> None:
    from orchestrator.build.state import inputs_from_json, inputs_to_json
    from orchestrator.core.buildkey import build_key
    from orchestrator.core.model import FileEntry, Inputs

    plain = Inputs("d" * 64, (FileEntry("a", 0o100644, "e" * 64),), (), "sha256:" + "1" * 64)
    pinned = Inputs(plain.dockerfile, plain.files, plain.args, plain.parent_digest,
                    packages=(("deb:curl:amd64", "7.88.1-10+deb12u12"),))
    newer = Inputs(plain.dockerfile, plain.files, plain.args, plain.parent_digest,
                   packages=(("deb:curl:amd64", "7.88.1-10+deb12u13"),))
    assert len({build_key(plain), build_key(pinned), build_key(newer)}) == 3
    assert inputs_from_json(inputs_to_json(pinned)) == pinned
    assert inputs_from_json(inputs_to_json(plain)) == plain


def test_origins_name_the_suite_offering_the_installed_version() -> None:
    from orchestrator.core.packagefix import origins
    from orchestrator.core.packages import ORIGIN, PackageRecord, PathFacts
    from orchestrator.core.sbom import Package

    installed = [deb("curl", "7.88.1-10+deb12u12", "os"), deb("libssl3", "3.0.15-1~deb12u1",
                                                               "upstream:debian"),
                 deb("local-only", "1", "os")]
    found = origins(installed, SNAPSHOTS.values())
    assert found == {("deb", "curl", "amd64"): "bookworm-security",
                     ("deb", "libssl3", "amd64"): "bookworm"}
    record = PackageRecord("sha256:" + "1" * 64, "os", (), {"var/lib/dpkg/status": PathFacts(
        "file", (Package("deb", "curl", "7.88.1-10+deb12u12", "amd64", (STATUS,)),))})
    [curl] = record.sbom_packages(found)
    assert (ORIGIN, "bookworm-security") in curl.properties


def test_a_version_an_index_garbles_is_no_fix_and_breaks_no_other() -> None:
    # A broken or hostile mirror answering "Version: 7.88.1-10+deb12u12 evil" must not
    # take the whole decision down (python-debian raises on it): every layer's fixes
    # (and a one-shot plan) went with it. The entry is skipped; the others stand.
    garbled = index(MAIN, "bookworm", False, curl="7.88.1-10+deb12u12 evil",
                    libexpat1="2.5.0-1+deb12u1")
    report = find_fixes(chain(), {**SNAPSHOTS, MAIN: garbled}, FixPolicy(only="all"))
    assert [f.version for f in report.fixes["os"]] == ["7.88.1-10+deb12u12"]
    assert report.fixes["os"][0].suite == "bookworm-security"
    assert [f.version for f in report.fixes["python"]] == ["2.5.0-1+deb12u1"]


def test_an_apk_version_with_anything_after_it_is_no_fix() -> None:
    # apk compares "3.3.2-r0<ESC>[2J" as 3.3.2-r0 (as far as it parses): it was a fix,
    # its text went into cause lines and the key. apk itself calls it invalid.
    apk = "apk http://dl-cdn.alpinelinux.org/alpine/v3.20/main"
    installed = InstalledPackage("apk", "openssl", "3.3.1-r0", "x86_64", None,
                                 "/lib/apk/db/installed", "os", "")
    layer = LayerPackages("os", "upstream:alpine", [installed], (apk,))

    def offered(version: str) -> IndexSnapshot:
        return IndexSnapshot(apk, "v3.20/main", False, None, "sha256:" + "c" * 64,
                             "http://x", {"openssl": (IndexEntry("openssl", version,
                                                                 "x86_64"),)})

    assert find_fixes([layer], {apk: offered("3.3.2-r0\x1b[2J")},
                      FixPolicy(only="all")).fixes == {}
    [fix] = find_fixes([layer], {apk: offered("3.3.2-r0")}, FixPolicy(only="all")).fixes["os"]
    assert fix.version == "3.3.2-r0"


BACKPORTS = "apt http://deb.debian.org/debian bookworm-backports"


def backports(*, not_automatic: bool = True, but_automatic_upgrades: bool = True,
              **versions: str | tuple[str, ...]) -> IndexSnapshot:
    """bookworm-backports as its Release says: NotAutomatic and ButAutomaticUpgrades."""
    entries = {name: tuple(IndexEntry(name, v, "amd64")
                           for v in ((found,) if isinstance(found, str) else found))
               for name, found in versions.items()}
    return dataclasses.replace(index(BACKPORTS, "bookworm-backports", False), entries=entries,
                               not_automatic=not_automatic,
                               but_automatic_upgrades=but_automatic_upgrades)


@pytest.mark.parametrize("but_automatic_upgrades", [True, False])
def test_a_backports_version_apt_would_not_install_is_not_the_fix(
        but_automatic_upgrades: bool) -> None:
    # only = "all" with bookworm-backports in the sources (common): the backports
    # version is the newest, so it was "the fix"; apt installs the security one, the
    # key pinned the backports one, every backports change retried it ("the mirror may
    # lag"), and a later security fix stayed covered by that pin.
    offered = {**SNAPSHOTS, BACKPORTS: backports(
        curl="8.11.1-1~bpo12+1", but_automatic_upgrades=but_automatic_upgrades)}
    layer = LayerPackages("os", "upstream:debian", [deb("curl", "7.88.1-10", "os")],
                          (MAIN, SECURITY, BACKPORTS))
    [fix] = find_fixes([layer], offered, FixPolicy(only="all")).fixes["os"]
    assert (fix.version, fix.suite) == ("7.88.1-10+deb12u12", "bookworm-security")
    # Backports alone offers nothing apt would upgrade to.
    alone = LayerPackages("os", "upstream:debian", [deb("curl", "7.88.1-10", "os")],
                          (BACKPORTS,))
    assert find_fixes([alone], offered, FixPolicy(only="all")).fixes == {}


def test_a_package_installed_from_backports_follows_backports() -> None:
    # ButAutomaticUpgrades: apt upgrades a package whose installed version came from
    # backports (both priority 100, the newer wins). The index showing the installed
    # version is what says where it came from.
    installed = deb("curl", "8.11.1-1~bpo12+1", "os")
    layer = LayerPackages("os", "upstream:debian", [installed], (MAIN, SECURITY, BACKPORTS))
    offered = {**SNAPSHOTS, BACKPORTS: backports(curl=("8.11.1-1~bpo12+1",
                                                       "8.11.1-1~bpo12+2"))}
    [fix] = find_fixes([layer], offered, FixPolicy(only="all")).fixes["os"]
    assert fix.reason() == \
        "package fix: curl 8.11.1-1~bpo12+1 -> 8.11.1-1~bpo12+2 (bookworm-backports)"
    assert (fix.index, fix.pin) == (BACKPORTS, ("deb:curl:amd64", "8.11.1-1~bpo12+2"))
    # NotAutomatic without ButAutomaticUpgrades (experimental): priority 1, never.
    experimental = {**offered, BACKPORTS: dataclasses.replace(
        offered[BACKPORTS], but_automatic_upgrades=False)}
    assert find_fixes([layer], experimental, FixPolicy(only="all")).fixes == {}
    # Backports moved on and no longer lists the installed version: nothing says where
    # it came from, so it is not taken as installed from there (conservative).
    moved_on = {**SNAPSHOTS, BACKPORTS: backports(curl="8.11.1-1~bpo12+2")}
    assert find_fixes([layer], moved_on, FixPolicy(only="all")).fixes == {}
    # A suite of default priority offering the installed version too: apt gives it
    # 500, which backports' 100 does not beat.
    also_main = {**offered, MAIN: index(MAIN, "bookworm", False, curl="8.11.1-1~bpo12+1")}
    assert find_fixes([layer], also_main, FixPolicy(only="all")).fixes == {}


def test_a_default_priority_suite_wins_over_a_newer_backports_version() -> None:
    # apt's candidate is the highest priority, then the newest: installed from
    # backports, a security update (500) is what apt takes, not backports' newer (100).
    installed = deb("curl", "8.11.1-1~bpo12+1", "os")
    layer = LayerPackages("os", "upstream:debian", [installed], (SECURITY, BACKPORTS))
    offered = {SECURITY: index(SECURITY, "bookworm-security", True, curl="8.11.1-2+deb12u1"),
               BACKPORTS: backports(curl=("8.11.1-1~bpo12+1", "8.11.1-3~bpo12+1"))}
    for policy in (FixPolicy(only="all"), FixPolicy()):
        [fix] = find_fixes([layer], offered, policy).fixes["os"]
        assert (fix.version, fix.suite) == ("8.11.1-2+deb12u1", "bookworm-security")


def test_only_security_is_unaffected_by_backports_in_the_sources() -> None:
    with_backports = {**SNAPSHOTS, BACKPORTS: backports(curl="8.11.1-1~bpo12+1",
                                                        libexpat1="2.6.4-1~bpo12+1")}
    sources = (MAIN, SECURITY, BACKPORTS)
    assert find_fixes(chain(sources=sources), with_backports, FixPolicy()) == \
        find_fixes(chain(), SNAPSHOTS, FixPolicy())
    # An advisory's fixed version that backports' newer version also satisfies: the
    # security suite's is still the one apt installs, and the one named.
    advisory = Advisory("DSA-6001-1", "deb", "curl", "7.88.1-10+deb12u12", "high")
    [fix] = find_fixes(chain(sources=sources), with_backports, FixPolicy(),
                       [advisory]).fixes["os"]
    assert (fix.version, fix.suite, fix.advisories) == \
        ("7.88.1-10+deb12u12", "bookworm-security", ("DSA-6001-1",))


def test_an_index_state_kept_before_the_release_flags_loads_as_an_ordinary_suite() -> None:
    # packages.db keeps each index's state as JSON; the version before this one wrote
    # no not_automatic/but_automatic_upgrades. Such a state still loads (default False:
    # an ordinary suite, until the next poll reads its Release again).
    from orchestrator.build.packagefixes import read_snapshots
    from orchestrator.build.packagestore import PackageStore

    old = json.dumps({
        "source": BACKPORTS, "url": "http://deb.debian.org/debian/dists/bookworm-backports/"
        "InRelease", "validators": {"http://x/InRelease": ["\"etag\"", None]},
        "digest": "sha256:" + "e" * 64, "date": "Sat, 29 Nov 2026 10:00:00 UTC",
        "suite": "bookworm-backports", "security": False,
        "files": {"main/binary-amd64": "f" * 64}, "wanted": ["curl"],
        "entries": {"main/binary-amd64": [["curl", "8.11.1-1~bpo12+1", "amd64", None,
                                           None]]},
        "checked_at": 1.0, "changed_at": 1.0}, separators=(",", ":"), sort_keys=True)

    class Store:
        def index_states(self) -> dict[str, str]:
            return {BACKPORTS: old}

    [(source, snapshot)] = read_snapshots(cast(PackageStore, Store())).items()
    assert source == BACKPORTS
    assert (snapshot.not_automatic, snapshot.but_automatic_upgrades, snapshot.priority) == \
        (False, False, 500)
    assert snapshot.entries["curl"] == (IndexEntry("curl", "8.11.1-1~bpo12+1", "amd64"),)
