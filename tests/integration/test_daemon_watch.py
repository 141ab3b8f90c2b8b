"""Acceptance: the daemon reacts to file saves and upstream changes, once each."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project, Testbed, image_config, unique_namespace
from tests.integration.daemon_helpers import DaemonProcess, daemon_config, wait_until

pytestmark = pytest.mark.integration
DEBOUNCE_S = 0.3


@pytest.fixture
def running(project: Project, testbed: Testbed) -> Iterator[DaemonProcess]:
    daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                  testbed.seed_tag)
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("mid", 'from = "base"\n', files={"conf.txt": "v1\n", ".dockerignore": "*.log\n"})
    project.layer("leaf", 'from = "mid"\n')
    project.layer("other", 'from = "base"\n')
    daemon = DaemonProcess(project).ready()
    daemon.idle()
    assert {b["layer"] for b in daemon.builds()} == {"base", "mid", "leaf", "other"}
    yield daemon
    daemon.kill()


def file_builds(daemon: DaemonProcess) -> list[dict[str, object]]:
    return [b for b in daemon.builds() if str(b.get("cause", "")).find("file changed") >= 0]


def test_a_save_rebuilds_the_layer_and_below_after_the_debounce(
    running: DaemonProcess, project: Project
) -> None:
    saved = time.time()
    (project.layers / "mid" / "conf.txt").write_text("v2\n")
    builds = wait_until(lambda: len(file_builds(running)) >= 2 and file_builds(running), 60,
                        what="rebuild after save")
    running.idle()
    builds = file_builds(running)
    assert sorted(str(b["layer"]) for b in builds) == ["leaf", "mid"]
    mid = next(b for b in builds if b["layer"] == "mid")
    assert mid["cause"] == "file changed: mid/conf.txt"
    assert float(mid["started_at"]) - saved <= DEBOUNCE_S + 0.5  # type: ignore[arg-type]


def test_a_burst_of_saves_gives_one_build(running: DaemonProcess, project: Project) -> None:
    target = project.layers / "mid" / "conf.txt"
    for i in range(20):
        target.write_text(f"burst {i}\n")
        time.sleep(0.03)
    wait_until(lambda: file_builds(running), 60, what="a build")
    time.sleep(DEBOUNCE_S + 1)
    running.idle()
    assert [b["layer"] for b in file_builds(running) if b["layer"] == "mid"] == ["mid"]


def test_temp_files_and_ignored_paths_trigger_nothing(
    running: DaemonProcess, project: Project
) -> None:
    folder = project.layers / "mid"
    (folder / ".conf.txt.swp").write_text("x")
    (folder / "conf.txt~").write_text("x")
    (folder / "debug.log").write_text("ignored by .dockerignore")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    time.sleep(DEBOUNCE_S + 1.5)
    assert file_builds(running) == []
    assert not any(e["event"] == "trigger_received" and "file changed" in e.get("trigger", "")
                   for e in running.events())


def test_a_broken_layer_toml_is_refused_and_the_old_catalog_kept(
    running: DaemonProcess, project: Project
) -> None:
    (project.layers / "leaf" / "layer.toml").write_text('from = "nowhere"\n')
    wait_until(lambda: any(e["event"] == "catalog_refused" for e in running.events()), 30,
               what="catalog_refused")
    refused = next(e for e in running.events() if e["event"] == "catalog_refused")
    assert "unknown parent 'nowhere'" in refused["error"]
    (project.layers / "mid" / "conf.txt").write_text("v3\n")  # still served by the old catalog
    wait_until(lambda: {"mid", "leaf"} <= {b["layer"] for b in file_builds(running)}, 60,
               what="builds on the old catalog")


def _push(src: str, dest: str, label: str | None = None) -> None:
    if label is None:
        subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                        "--dest-tls-verify=false", f"docker://{src}", f"docker://{dest}"],
                       check=True)
        return
    ctr = subprocess.run(["buildah", "from", "--tls-verify=false", src], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["buildah", "config", "--label", label, ctr], check=True)
        subprocess.run(["buildah", "commit", "-q", ctr, dest], check=True,
                       capture_output=True)
        subprocess.run(["buildah", "push", "-q", "--tls-verify=false", dest], check=True)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def test_a_new_upstream_digest_rebuilds_the_rooted_subtree_once(
    project: Project, testbed: Testbed
) -> None:
    namespace = unique_namespace()
    upstream = f"{testbed.registry}/{namespace}/upstream"
    _push(f"{testbed.seed_image}:{testbed.seed_tag}", f"{upstream}:1")
    daemon_config(project, testbed.registry, namespace, testbed.seed_image, "1",
                  poll="1s", upstream_image=upstream)
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("child", 'from = "base"\n')
    daemon = DaemonProcess(project).ready()
    try:
        daemon.idle()
        _push(f"{testbed.seed_image}:{testbed.seed_tag}", f"{upstream}:1", "security.fix=1")

        def upstream_builds() -> list[dict[str, object]]:
            return [b for b in daemon.builds() if "upstream seed changed" in str(b["cause"])]

        wait_until(lambda: len(upstream_builds()) == 2, 60, what="subtree rebuilt")
        daemon.idle()
        time.sleep(3)  # three more polls of an unchanged tag
        assert sorted(str(b["layer"]) for b in upstream_builds()) == ["base", "child"]
        total = len(daemon.builds())
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    again = DaemonProcess(project).ready()
    try:
        again.idle()
        time.sleep(2.5)
        again.idle()
        assert len(again.builds()) == total  # a restart is no rebuild storm
    finally:
        again.kill()


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_a_new_git_tag_rebuilds_with_that_value(
    project: Project, testbed: Testbed, tmp_path: Path
) -> None:
    work, bare = tmp_path / "pyenv", tmp_path / "pyenv.git"
    work.mkdir()
    _git(work, "init", "-q")
    _git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
         "-m", "one")
    _git(work, "tag", "v2.3.0")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    namespace = unique_namespace()
    daemon_config(project, testbed.registry, namespace, testbed.seed_image, testbed.seed_tag,
                  extra=f'[upstream.pyenv]\ngit = "file://{bare}"\ntrack = "semver"\n'
                        'poll = "1s"\n')
    project.layer("pyenv", 'from = "upstream:seed"\ntags = ["{upstream.pyenv.version}"]\n'
                  '[args]\nPYENV_VERSION = "{upstream.pyenv.tag}"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG PYENV_VERSION\n"
                  "LABEL org.example.pyenv.version=$PYENV_VERSION\n"
                  "RUN echo pyenv $PYENV_VERSION\nUSER 1000\n")
    daemon = DaemonProcess(project).ready()
    try:
        daemon.idle()
        _git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
             "--allow-empty", "-m", "two")
        _git(work, "tag", "v2.4.0")
        _git(work, "push", "-q", str(bare), "--tags")
        build = wait_until(lambda: next((b for b in daemon.builds()
                                         if "upstream pyenv changed" in str(b["cause"])), None),
                           60, what="rebuild on new tag")
        daemon.idle()
        assert "v2.3.0" in str(build["cause"]) and "v2.4.0" in str(build["cause"])
        labels = image_config(testbed.registry, f"{namespace}/pyenv", "2.4.0")["config"]["Labels"]
        assert labels["org.example.pyenv.version"] == "v2.4.0"
        assert labels["org.opencontainers.image.version"] == "2.4.0"
    finally:
        daemon.kill()


def test_changes_during_a_build_give_one_follow_up_and_no_stale_child(
    project: Project, testbed: Testbed
) -> None:
    from tests.integration.daemon_helpers import api

    namespace = unique_namespace()
    daemon_config(project, testbed.registry, namespace, testbed.seed_image, testbed.seed_tag)
    project.layer("base", 'from = "upstream:seed"\n')
    project.layer("slow", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY v.txt /tmp/v.txt\nRUN sleep 4\n"
                  "USER 1000\n", files={"v.txt": "1\n"})
    project.layer("leaf", 'from = "slow"\n')
    daemon = DaemonProcess(project).ready()
    try:
        wait_until(lambda: any(b["layer"] == "slow" and b["outcome"] == "running"
                               for b in daemon.builds()), 60, what="slow running")
        # While slow builds: a file change and two manual triggers of it.
        (project.layers / "slow" / "v.txt").write_text("2\n")
        time.sleep(DEBOUNCE_S + 0.5)
        for _ in range(2):
            assert api(daemon.socket, "POST", "/v1/builds", {"layers": ["slow"]})[0] == 202
        daemon.idle(180)
        slow = [b for b in reversed(daemon.builds("slow")) if b["outcome"] == "built"]
        leaf = [b for b in daemon.builds("leaf") if b["outcome"] == "built"]
        assert len(slow) == 2  # the first build, and exactly one follow-up
        assert len(leaf) == 1  # never built on the superseded first digest
        labels = image_config(testbed.registry, f"{namespace}/leaf", leaf[0]["digest"])
        assert labels["config"]["Labels"]["org.opencontainers.image.base.digest"] \
            == slow[1]["digest"]
    finally:
        daemon.kill()


def test_rebuild_every_schedules_periodic_rebuilds(project: Project, testbed: Testbed) -> None:
    daemon_config(project, testbed.registry, unique_namespace(), testbed.seed_image,
                  testbed.seed_tag)
    project.config.write_text(project.config.read_text().replace(
        'drain_timeout = "30s"', 'drain_timeout = "30s"\nschedule_check = "1s"'))
    project.layer("base", 'from = "upstream:seed"\n[rebuild]\nevery = "3s"\n')
    daemon = DaemonProcess(project).ready()
    try:
        wait_until(lambda: any("scheduled" in str(b["cause"]) and b["outcome"] == "built"
                               for b in daemon.builds("base")), 60, what="a scheduled rebuild")
        scheduled = next(b for b in daemon.builds("base") if "scheduled" in str(b["cause"]))
        assert scheduled["reason"] == "scheduled"
    finally:
        daemon.kill()
