"""Package fixes wired through: the decision's reason, the key's pins in the decide
step, what is polled, the window, and ``fix_not_applied`` without a loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.decide import Decider
from orchestrator.build.packagefixes import (
    FixView,
    fix_view,
    layer_packages,
    on_loopback,
    plan_notes,
    render_notes,
    upgrade_hints,
    watched,
)
from orchestrator.build.packagestore import PACKAGES_DB, PackageStore
from orchestrator.build.state import AsyncStateStore, LayerRecord, StateStore
from orchestrator.catalog.config import load_config
from orchestrator.catalog.layers import load_catalog
from orchestrator.core.buildkey import build_key
from orchestrator.core.model import Inputs, Reason
from orchestrator.core.packagefix import (
    FixPolicy,
    LayerPackages,
    check_applied,
    covered,
    dockerfile_pins,
    find_fixes,
    pending,
)
from orchestrator.core.packages import Installer, PackageRecord, PathFacts
from orchestrator.core.pkgsources import ApkRepository, AptSuite
from orchestrator.core.plan import decide
from orchestrator.core.sbom import Package
from orchestrator.service.events import EventBus
from orchestrator.service.metrics import Metrics
from orchestrator.service.packagewatch import PackageWatch
from orchestrator.service.ports import Loaded
from orchestrator.service.webhooks import payload_for
from tests.unit.test_indexwatch import Repo, Server, served  # noqa: F401 (a fixture)
from tests.unit.test_packagefix import MAIN, SECURITY, SNAPSHOTS, deb

INPUTS = Inputs("sha256:d", (), (), "sha256:p")


# --- the decision and the key ----------------------------------------------------------------


def test_new_pins_alone_make_a_package_fix_and_other_changes_win() -> None:
    pinned = replace(INPUTS, packages=(("deb:curl:amd64", "7.88.1-10+deb12u12"),))
    decision = decide("os", pinned, INPUTS, image_found=False)
    assert decision.reason is Reason.PACKAGE_FIX
    assert decision.describe() == "package fix: curl 7.88.1-10+deb12u12"
    both = replace(pinned, parent_digest="sha256:q")
    assert decide("os", both, INPUTS, image_found=False).reason is Reason.PARENT_REBUILT
    # Pins in the key only when there are any: keys made before stay the same.
    assert build_key(INPUTS) != build_key(pinned)


def view_for(installed_version: str, pins: tuple[tuple[str, str], ...] = ()) -> FixView:
    layers = [LayerPackages("os", "upstream:debian", [deb("curl", installed_version, "os")],
                            (SECURITY,))]
    report = find_fixes(layers, SNAPSHOTS, FixPolicy())
    return FixView(report, SNAPSHOTS, {"os": pins})


def with_packages(view: FixView | None, previous: LayerRecord | None,
                  inputs: Inputs = INPUTS, *, anyway: bool = False
                  ) -> tuple[Inputs, tuple[Any, ...]]:
    it = Decider.__new__(Decider)
    it.packages = view
    return it._with_packages("os", inputs, previous, anyway=anyway)


def record(inputs: Inputs) -> LayerRecord:
    return LayerRecord("os", build_key(inputs), "sha256:i", "r@sha256:i", inputs, 0.0)


def test_the_key_pins_a_fix_once_and_keeps_it_whether_or_not_it_took() -> None:
    view = view_for("7.88.1-10")
    first, fixes = with_packages(view, record(INPUTS))
    assert first.packages == (("deb:curl:amd64", "7.88.1-10+deb12u12"),)
    assert [f.version for f in fixes] == ["7.88.1-10+deb12u12"]
    # Rebuilt, and the image has the fix: no fix left, the pins (and key) stay.
    after, taken = with_packages(view_for("7.88.1-10+deb12u12", first.packages), record(first))
    assert after == first and taken == ()
    # Rebuilt, and the image still lacks it (pinned): the same key, nothing taken in.
    stuck = view_for("7.88.1-10", first.packages)
    again, taken = with_packages(stuck, record(first))
    assert build_key(again) == build_key(first) and taken == ()
    assert stuck.pending("os") == () and [f.version for f in stuck.not_applied("os")] == [
        "7.88.1-10+deb12u12"]
    # Another input changes: the pins start afresh with what the indexes offer.
    moved = replace(INPUTS, parent_digest="sha256:q")
    fresh, taken = with_packages(stuck, record(first), moved)
    assert fresh.packages == first.packages and len(taken) == 1
    # Without [packages] the pins stay while the other inputs do: no spurious rebuild.
    assert with_packages(None, record(first))[0] == first
    assert with_packages(None, record(first), moved)[0].packages == ()


def test_covered_and_pending_compare_versions() -> None:
    [fix] = view_for("7.88.1-10").report.fixes["os"]
    assert not covered(fix, ())
    assert covered(fix, (("deb:curl:amd64", "7.88.1-10+deb12u12"),))
    assert covered(fix, (("deb:curl:amd64", "7.88.1-10+deb12u13"),))
    assert pending([fix], (("deb:curl:amd64", "7.88.1-10+deb12u1"),)) == (fix,)


def test_a_dockerfile_pin_is_named_as_the_reason_a_fix_did_not_apply() -> None:
    text = ("RUN apt-get update && apt-get install -y --no-install-recommends \\\n"
            "    curl=7.88.1-10 'libssl3:amd64=3.0.15-1' tzdata && rm -rf /x\n"
            "RUN apk add --no-cache musl=1.2.4-r2 busybox\n")
    assert dockerfile_pins(text) == {
        "curl": "the Dockerfile (curl=7.88.1-10)",
        "libssl3": "the Dockerfile (libssl3:amd64=3.0.15-1)",
        "musl": "the Dockerfile (musl=1.2.4-r2)"}
    [fix] = view_for("7.88.1-10").report.fixes["os"]
    [stuck] = check_applied([fix], [deb("curl", "7.88.1-10", "os")], dockerfile=text)
    assert stuck.reason == "its version is pinned in the Dockerfile (curl=7.88.1-10)"
    [lag] = check_applied([fix], [deb("curl", "7.88.1-10", "os")], dockerfile="RUN true")
    assert "mirror" in lag.reason


# --- what is polled, what plan lists ----------------------------------------------------------


def image(owner: str, packages: list[tuple[str, str, str]], sources: str) -> PackageRecord:
    status = tuple(Package("deb", name, version, "amd64", ("/var/lib/dpkg/status",))
                   for name, version, _ in packages)
    installers = {("deb", name, "amd64", "/var/lib/dpkg/status"): Installer(by, "")
                  for name, _, by in packages}
    return PackageRecord("sha256:" + owner.encode().hex().ljust(64, "0"), owner, (), {
        "var/lib/dpkg/status": PathFacts("file", status),
        "etc/apt/sources.list": PathFacts("file", text=sources)}, installers)


def write_catalog(tmp_path: Path, packages: str = 'poll = "1s"\nwindow = "1h"\n') -> Loaded:
    (tmp_path / "layers" / "os").mkdir(parents=True)
    (tmp_path / "layers" / "os" / "layer.toml").write_text('from = "upstream:debian"\n')
    (tmp_path / "layers" / "os" / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN apt-get install -y curl\nUSER 1000\n")
    (tmp_path / "layers" / "app").mkdir(parents=True)
    (tmp_path / "layers" / "app" / "layer.toml").write_text('from = "os"\n')
    (tmp_path / "layers" / "app" / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 1000\n")
    (tmp_path / "config.toml").write_text(f"""
[catalog]
layers = "layers"
[registry]
url = "127.0.0.1:5000/x"
[state]
dir = "state"
[upstream.debian]
image = "127.0.0.1:5000/debian"
tag = "bookworm"
[packages]
{packages}
""")
    config = load_config(tmp_path / "config.toml")
    return Loaded(tmp_path / "config.toml", config,
                  load_catalog(config.layers_dir, config.upstreams))


def test_only_indexes_that_can_offer_a_fix_are_polled(tmp_path: Path) -> None:
    loaded = write_catalog(tmp_path)
    sources = ("deb http://deb.debian.org/debian bookworm main\n"
               "deb http://security.debian.org/debian-security bookworm-security main\n"
               "deb file:/srv/local ./\n")
    images = {"os": [image("os", [("curl", "7.88.1-10", "os"),
                                  ("libc6", "2.36-9", "upstream:debian")], sources)],
              "app": [image("app", [("curl", "7.88.1-10", "os")], sources)]}
    layers = layer_packages(loaded.catalog, images, {})
    config = loaded.config.packages
    assert config is not None
    found = watched(config, images, layers)
    # "security": only a security suite can offer a fix; file: is never polled; the app
    # installed nothing, so nothing is polled for it.
    [sid] = found
    assert sid == "apt http://security.debian.org/debian-security bookworm-security"
    assert found[sid].names == {"curl", "libc6"} and found[sid].layers == {"os"}
    assert found[sid].arches == {"amd64"}
    everything = watched(replace(config, only="all"), images, layers)
    assert len(everything) == 2
    assert on_loopback(AptSuite("http://127.0.0.1:8080/debian", "x"))
    assert on_loopback(ApkRepository("http://localhost/alpine/v3.20/main"))
    assert not on_loopback(AptSuite("http://deb.debian.org/debian", "x"))


def test_plan_lists_pending_fixes_with_what_they_rebuild_and_waiting_ones(
        tmp_path: Path) -> None:
    loaded = write_catalog(tmp_path)
    config = loaded.config.packages
    assert config is not None
    images = {"os": [image("os", [("curl", "7.88.1-10", "os"),
                                  ("libssl3", "3.0.15-1~deb12u1", "upstream:debian")],
                           "deb http://deb.debian.org/debian-security bookworm-security main\n")]}
    records = {"os": record(INPUTS)}
    snapshots = {SECURITY: SNAPSHOTS[SECURITY], MAIN: SNAPSHOTS[MAIN]}
    view = fix_view(config, loaded.catalog, records, images, snapshots, {})
    notes = plan_notes(view, loaded.catalog)
    assert [(n["kind"], n["layer"]) for n in notes] == [("pending", "os"),
                                                        ("waiting", "upstream:debian")]
    assert notes[0]["rebuilds"] == ["os", "app"]
    lines = render_notes(notes)
    assert lines[0] == ("package fix: curl 7.88.1-10 -> 7.88.1-10+deb12u12 (bookworm-security) "
                        "(layer os): rebuilds os, app")
    assert "RUN apt-get update && apt-get upgrade -y" in lines[1]
    [index] = view.indexes(view.pending("os"))
    assert index.suite == "bookworm-security" and index.fixes == (
        "curl 7.88.1-10 -> 7.88.1-10+deb12u12",)


def test_plan_json_names_a_private_mirror_without_its_credentials(tmp_path: Path) -> None:
    # `plan --json` and GET /v1/status print fix_json; the index id is the URL the
    # image's sources.list wrote, user:password@ included.
    loaded = write_catalog(tmp_path)
    config = loaded.config.packages
    assert config is not None
    private = "apt http://ci:s3cret@mirror.corp/debian-security bookworm-security"
    images = {"os": [image("os", [("curl", "7.88.1-10", "os")],
                           "deb http://ci:s3cret@mirror.corp/debian-security "
                           "bookworm-security main\n")]}
    snapshots = {private: replace(SNAPSHOTS[SECURITY], source=private)}
    view = fix_view(config, loaded.catalog, {"os": record(INPUTS)}, images, snapshots, {})
    notes = plan_notes(view, loaded.catalog)
    assert notes and notes[0]["fixes"][0]["index"] == \
        "apt http://mirror.corp/debian-security bookworm-security"
    assert "s3cret" not in repr(notes)


def test_package_events_become_webhooks() -> None:
    kind, body = payload_for("package_fix", {"layer": "os", "reason": "package fix: x",
                                             "fixes": [], "rebuilds": ["os"]}) or ("", {})
    assert kind == "package_fix" and body["rebuilds"] == ["os"]
    assert (payload_for("fix_not_applied", {"layer": "os", "fixes": []}) or ("",))[0] == \
        "fix_not_applied"


# --- the daemon's watch: polls, window, trigger ------------------------------------------------


class Harness:
    def __init__(self, tmp_path: Path, url: str, window: str) -> None:
        self.loaded = write_catalog(
            tmp_path, f'poll = "1s"\nwindow = "{window}"\nurgent = ["critical"]\n')
        state_dir = self.loaded.config.state_dir
        state_dir.mkdir()
        self.state = AsyncStateStore(StateStore(state_dir / "state.db"), inline=True)
        self.store = PackageStore(state_dir / PACKAGES_DB)
        sources = f"deb [trusted=yes] {url} bookworm-security main\n"
        self.os_image = image("os", [("curl", "1.0-1", "os")], sources)
        self.store.save([self.os_image])
        self.triggered: list[tuple[list[str], str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        bus = EventBus()
        bus.listeners.append(lambda e, f, level: self.events.append((e, f)))

        async def trigger(layers: list[str], cause: str) -> dict[str, Any]:
            self.triggered.append((layers, cause))
            return {}

        def busy() -> set[str]:
            return set()

        self.watch = PackageWatch(self.loaded, self.state, bus, Metrics(), trigger=trigger,
                                  busy=busy, phase=lambda: "ready", on_change=lambda: None)

    async def start(self) -> None:
        await self.state.records.save(LayerRecord("os", build_key(INPUTS), self.os_image.digest,
                                                  "r@x", INPUTS, 0.0))
        await self.watch.start(polling=False)

    async def poll(self) -> None:
        for poller in list(self.watch.pollers.values()):
            await poller.check()
        await self.watch.refresh()
        await self.watch._fire_due()


@pytest.fixture
async def harness(tmp_path: Path, served: tuple[Repo, Server]  # noqa: F811
                  ) -> AsyncIterator[tuple[Harness, Repo]]:
    repo, server = served
    repo.publish({"curl": "1.0-1"})
    it = Harness(tmp_path, server.url, "300ms")
    await it.start()
    try:
        yield it, repo
    finally:
        await it.watch.close()
        await it.state.close()


async def test_fixes_within_the_window_make_one_trigger_naming_the_fix(
        harness: tuple[Harness, Repo]) -> None:
    it, repo = harness
    await it.poll()
    assert len(it.watch.pollers) == 1
    assert it.triggered == [] and it.watch.view.pending_layers() == {}
    repo.publish({"curl": "1.1-1"})
    await it.poll()
    assert it.triggered == []  # the window is open
    assert it.watch.status()["pending"][0]["window_closes_at"] is not None
    repo.publish({"curl": "1.2-1"})
    await it.poll()
    await asyncio.sleep(0.35)
    await it.watch._fire_due()
    assert it.triggered == [(["os"], "package fix: curl 1.0-1 -> 1.2-1 (bookworm-security)")]
    assert [e for e, _ in it.events].count("package_fix") == 1
    fields = dict(it.events)["package_fix"]
    assert fields["rebuilds"] == ["os", "app"] and fields["indexes"][0]["digest"]
    # Asked for: not asked again while the build is pending.
    await it.poll()
    await it.watch._fire_due()
    assert len(it.triggered) == 1
    assert it.watch.metrics.package_fixes_pending.labels("os")._value.get() == 1
    assert it.watch.oldest_unapplied_s() == 0.0  # the window closed: triggered


async def test_a_rebuild_that_did_not_take_the_fix_is_reported_once_and_not_retried(
        harness: tuple[Harness, Repo]) -> None:
    it, repo = harness
    await it.poll()
    repo.publish({"curl": "1.1-1"})
    await it.poll()
    await asyncio.sleep(0.35)
    await it.watch._fire_due()
    assert len(it.triggered) == 1
    # The build pinned the fix in its key, but the image still has 1.0-1.
    pinned = replace(INPUTS, packages=(("deb:curl:amd64", "1.1-1"),))
    rebuilt = replace(it.os_image, digest="sha256:" + "e" * 64)
    it.store.save([rebuilt])
    await it.state.records.save(LayerRecord("os", build_key(pinned), rebuilt.digest, "r@y",
                                            pinned, time.time()))
    it.watch.notice("build_finished", {"layer": "os", "outcome": "built"})
    it.watch.notice("run_finished", {})
    await it.watch.refresh()
    stuck = [f for e, f in it.events if e == "fix_not_applied"]
    assert len(stuck) == 1 and stuck[0]["layer"] == "os"
    assert "mirror" in stuck[0]["fixes"][0]["why"]
    for _ in range(2):
        await it.poll()
        await asyncio.sleep(0.35)
        await it.watch._fire_due()
    assert len(it.triggered) == 1 and it.watch.view.pending_layers() == {}
    assert [e for e, _ in it.events].count("fix_not_applied") == 1
    assert it.watch.status()["not_applied"][0]["layer"] == "os"
    # A newer version: a new pin, so a new key, so one more try.
    repo.publish({"curl": "1.2-1"})
    await it.poll()
    await asyncio.sleep(0.35)
    await it.watch._fire_due()
    assert len(it.triggered) == 2


async def test_the_window_and_the_index_states_survive_a_restart(
        harness: tuple[Harness, Repo], tmp_path: Path) -> None:
    it, repo = harness
    await it.poll()
    repo.publish({"curl": "1.1-1"})
    for poller in it.watch.pollers.values():
        await poller.check()
    await it.watch.refresh()
    opened = dict(it.watch.windows)
    assert list(opened) == ["os"]
    await it.watch.close()
    await asyncio.sleep(0.05)  # the window's write, off the loop
    again = PackageWatch(it.loaded, it.state, EventBus(), Metrics(), trigger=it.watch.trigger,
                         busy=it.watch.busy, phase=lambda: "ready", on_change=lambda: None)
    await again.start(polling=False)
    try:
        assert again.windows == opened
        assert list(again.view.pending_layers()) == ["os"]  # from the kept index state
    finally:
        await again.close()


async def test_a_restart_between_the_trigger_and_the_build_does_not_reopen_the_window(
        harness: tuple[Harness, Repo]) -> None:
    # The window closed and the rebuild was queued, then the daemon restarted before
    # it ran (a deploy, a crash). The restarted watch did not know it had triggered:
    # the queued build kept the old key (its fixes were not released) and a fresh
    # window opened, so every restart within a window put the fix off by another.
    it, repo = harness
    await it.poll()
    repo.publish({"curl": "1.1-1"})
    await it.poll()
    opened = it.watch.windows["os"]
    await asyncio.sleep(0.35)
    await it.watch._fire_due()
    assert len(it.triggered) == 1
    await it.watch.close()
    triggered: list[tuple[list[str], str]] = []

    async def trigger(layers: list[str], cause: str) -> dict[str, Any]:
        triggered.append((layers, cause))
        return {}

    again = PackageWatch(it.loaded, it.state, EventBus(), Metrics(), trigger=trigger,
                         busy=it.watch.busy, phase=lambda: "ready", on_change=lambda: None)
    await again.start(polling=False)
    try:
        assert again.windows == {"os": opened}
        await again._fire_due()
        assert [layers for layers, _ in triggered] == [["os"]]
    finally:
        await again.close()


async def test_lint_suggests_the_upgrade_step_for_a_fix_waiting_on_the_upstream(
        tmp_path: Path, served: tuple[Repo, Server]) -> None:  # noqa: F811
    repo, server = served
    repo.publish({"curl": "1.0-1", "libc6": "2.36-9"})
    it = Harness(tmp_path, server.url, "1h")
    it.os_image = image("os", [("curl", "1.0-1", "os"), ("libc6", "2.36-9", "upstream:debian")],
                        f"deb [trusted=yes] {server.url} bookworm-security main\n")
    it.store.save([it.os_image])
    await it.start()
    try:
        repo.publish({"curl": "1.0-1", "libc6": "2.36-9+deb12u1"})
        await it.poll()
        assert it.triggered == [] and it.watch.view.pending_layers() == {}
        [waiting] = it.watch.status()["waiting"]
        assert waiting["layer"] == "upstream:debian" and waiting["layers"] == ["os"]
        await it.watch.close()
        hints = await asyncio.to_thread(upgrade_hints, it.loaded.config, it.loaded.catalog)
        assert len(hints) == 1 and "layers/os/Dockerfile:1: warning: 1 package fix(es) for " \
            "what upstream:debian installed wait on its refresh" in hints[0]
        assert "RUN apt-get update && apt-get upgrade -y" in hints[0]
    finally:
        await it.watch.close()
        await it.state.close()


async def built_without_the_fix(it: Harness, pins: tuple[tuple[str, str], ...],
                                dockerfile_pin: bool = False) -> None:
    """A build keyed with ``pins`` whose image still has curl 1.0-1."""
    if dockerfile_pin:
        (it.loaded.catalog.layers["os"].dockerfile).write_text(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN apt-get install -y curl=1.0-1\n")
    inputs = replace(INPUTS, packages=pins)
    rebuilt = replace(it.os_image, digest="sha256:" + build_key(inputs))
    it.store.save([rebuilt])
    await it.state.records.save(LayerRecord("os", build_key(inputs), rebuilt.digest, "r@y",
                                            inputs, time.time()))
    it.watch.notice("build_finished", {"layer": "os", "outcome": "built"})
    it.watch.notice("run_finished", {})
    await it.watch.refresh()


async def settle(it: Harness) -> None:
    await it.poll()
    await asyncio.sleep(0.35)
    await it.watch._fire_due()


@pytest.mark.parametrize("dockerfile_pin", [False, True])
async def test_a_fix_a_lagging_mirror_kept_out_is_tried_again_once_per_index_change(
        harness: tuple[Harness, Repo], dockerfile_pin: bool) -> None:
    it, repo = harness
    await it.poll()
    repo.publish({"curl": "1.1-1"})
    await settle(it)
    assert len(it.triggered) == 1
    first = (("deb:curl:amd64", "1.1-1"),)
    await built_without_the_fix(it, first, dockerfile_pin)
    [stuck] = [f for e, f in it.events if e == "fix_not_applied"]
    assert stuck["fixes"][0]["retried_when_the_index_changes"] is not dockerfile_pin
    # The index changes (another package), the fixed version is the same.
    repo.publish({"curl": "1.1-1", "zlib1g": "1.3"})
    await settle(it)
    await settle(it)
    if dockerfile_pin:  # a pin: only a newer version tries again
        assert len(it.triggered) == 1 and it.watch.view.pending_layers() == {}
        return
    assert len(it.triggered) == 2
    retry = it.watch.view.retries["os"]
    assert [name for name, _ in retry] == ["retry:deb:curl:amd64"]
    # The decide step keys the retry: a new key, the fix taken in again.
    inputs, taken = with_packages(it.watch.view, record(replace(INPUTS, packages=first)))
    assert inputs.packages == tuple(sorted((*first, *retry))) and len(taken) == 1
    decision = decide("os", inputs, replace(INPUTS, packages=first), image_found=False)
    assert decision.reason is Reason.PACKAGE_FIX
    # Still not taken: reported again, and not tried again until the next change.
    await built_without_the_fix(it, inputs.packages)
    assert [e for e, _ in it.events].count("fix_not_applied") == 2
    await settle(it)
    await settle(it)
    assert len(it.triggered) == 2 and it.watch.view.pending_layers() == {}


async def test_a_layer_building_for_another_reason_takes_the_fix_instead_of_a_second_build(
        harness: tuple[Harness, Repo]) -> None:
    it, repo = harness
    building = {"os"}

    def busy() -> set[str]:
        return building

    it.watch.busy = busy
    await it.poll()
    repo.publish({"curl": "1.1-1"})
    await settle(it)
    assert it.triggered == []  # os is being built: that build's key takes the fix in
    # It was decided before the fix was seen, so its image lacks it: now a rebuild.
    building = set()
    await built_without_the_fix(it, ())
    await it.watch._fire_due()
    assert it.triggered == [(["os"], "package fix: curl 1.0-1 -> 1.1-1 (bookworm-security)")]
    assert [e for e, _ in it.events].count("fix_not_applied") == 0  # it was not built for it


def test_a_fix_in_its_window_waits_unless_the_layer_builds_anyway() -> None:
    waiting = replace(view_for("7.88.1-10"), released=frozenset())
    # A run that only stands on os (a child's edit) does not rebuild it early.
    inputs, taken = with_packages(waiting, record(INPUTS))
    assert inputs == INPUTS and taken == ()
    # os builds anyway (its parent moved): it takes the fix along, in its key.
    moved = replace(INPUTS, parent_digest="sha256:q")
    inputs, taken = with_packages(waiting, record(INPUTS), moved)
    assert inputs.packages == (("deb:curl:amd64", "7.88.1-10+deb12u12"),) and len(taken) == 1
    # The window closed (released): the fix is pinned, so os is stale.
    released = replace(waiting, released=frozenset({"os"}))
    assert with_packages(released, record(INPUTS))[0].packages == inputs.packages


def test_a_forced_or_scheduled_rebuild_in_the_window_takes_the_fix_into_its_key() -> None:
    # `build --force os` (or its rebuild_every coming due) while a fix waits in its
    # window: the build runs apt-get without the step cache, so the new image gets
    # the fixed version, but it was keyed with the old pins: the new content went
    # under the old key, which README says it never does ("a layer rebuilt meanwhile
    # for any other reason takes its pending fixes along (they are in its key)").
    waiting = replace(view_for("7.88.1-10"), released=frozenset())
    inputs, taken = with_packages(waiting, record(INPUTS), anyway=True)
    assert inputs.packages == (("deb:curl:amd64", "7.88.1-10+deb12u12"),) and len(taken) == 1
    assert build_key(inputs) != build_key(INPUTS)


def test_status_shows_indexes_windows_and_what_was_not_applied() -> None:
    from orchestrator.cli.client import package_lines

    now = time.time()
    lines = package_lines({
        "enabled": True, "window_s": 3600.0,
        "indexes": [{"source": "apt http://m/debian bookworm-security", "suite":
                     "bookworm-security", "date": "Sat, 29 Nov 2026", "checked_at": now - 5,
                     "error": None, "next_in_s": 55.0},
                    {"source": "apt http://gone bookworm-security", "error": "HTTP 503",
                     "checked_at": now, "next_in_s": 10.0}],
        "pending": [{"layer": "os", "reason": "package fix: curl 1 -> 2 (bookworm-security)",
                     "window_closes_at": now + 600, "triggered": False, "urgent": False}],
        "not_applied": [{"layer": "app", "fixes": [{"message": "fix_not_applied: x"}]}],
        "waiting": [{"reason": "package fix: libc6 1 -> 2 (bookworm-security)",
                     "layer": "upstream:debian", "layers": ["os"], "hint": "RUN apk upgrade"}]})
    assert lines[1] == "package fixes (window 3600s)"
    assert "bookworm-security Sat, 29 Nov 2026; checked 5s ago, next poll in 55s" in lines[2]
    assert "error: HTTP 503" in lines[3]
    assert lines[4].startswith("  os: package fix: curl 1 -> 2 (bookworm-security); "
                               "window closes in 6")
    assert lines[5] == "  app: fix_not_applied: x"
    assert "waiting on upstream:debian's refresh (os could add: RUN apk upgrade)" in lines[6]
    assert package_lines({"enabled": False}) == []
