"""The fault suite: what a careless or hostile user does to a running daemon, and
what the key must survive. Real daemon process, real buildah, real registry."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.build.snapshot import scratch_path
from orchestrator.catalog.config import load_config
from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.daemon_helpers import (
    DaemonProcess,
    UnixHTTPConnection,
    api,
    daemon_config,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.long(2.5)]


def buildah_containers() -> set[str]:
    out = subprocess.run(["buildah", "containers", "-q"], capture_output=True, text=True)
    return set(out.stdout.split())


def processes(tag: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def catalog(project: Project, testbed: Testbed, extra: str = "", **layers: str) -> str:
    namespace = unique_namespace()
    daemon_config(project, testbed.registry, namespace, testbed.seed_image, testbed.seed_tag,
                  extra=extra, drain="2s")
    project.layer("base", 'from = "upstream:seed"\n')
    for name, dockerfile_body in layers.items():
        project.layer(name, 'from = "base"\n',
                      "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n" + dockerfile_body)
    return namespace


@pytest.fixture
def daemon_for(project: Project) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.mark.serial  # counts every buildah container on the machine: runs alone
def test_kill_9_during_a_long_run_leaves_no_process_container_or_scratch(
    project: Project, testbed: Testbed, daemon_for: list[DaemonProcess]
) -> None:
    tag = f"sleep 3{os.getpid() % 100:02d}"
    catalog(project, testbed, slow=f"RUN echo begin; {tag}; echo end\n")
    containers_before = buildah_containers()
    daemon = DaemonProcess(project).ready()
    daemon_for.append(daemon)
    wait_until(lambda: processes(tag), 120, 0.2, "the long RUN")
    # The running build's snapshot: in the tmpfs scratch folder (a small
    # context), else in the state dir.
    config = load_config(project.config)
    shm = scratch_path(config.scratch, config.state_dir)
    places = [p for p in (project.root / "state" / "builds", shm) if p is not None]
    assert any(p.is_dir() and any(p.iterdir()) for p in places)
    daemon.kill()
    # Nothing of the build outlives the daemon: not buildah, not its RUN child.
    owned = [str(project.root / "state"), *([str(shm)] if shm else [])]
    wait_until(lambda: not processes(tag) and not any(processes(o) for o in owned),
               30, 0.2, "the builder's tree to stop")
    again = DaemonProcess(project).ready()
    daemon_for.append(again)
    wait_until(lambda: processes(tag), 120, 0.2, "the re-run")  # interrupted -> built again
    assert again.stop(signal.SIGTERM, 60) == 0
    assert not processes(tag)
    assert buildah_containers() <= containers_before
    for place in places:  # the snapshot the kill left, cleared by the next start
        assert not place.exists() or not any(place.iterdir()), place
    assert not list((project.root / "state" / "tmp").glob("*")) \
        if (project.root / "state" / "tmp").exists() else True
    events = [e["event"] for e in again.events()]
    assert "build_interrupted" in events and "state_recovered" in events


def test_a_forced_trigger_followed_by_a_plain_one_is_never_dropped(
    project: Project, testbed: Testbed, daemon_for: list[DaemonProcess]
) -> None:
    # Every build of "stamp" gives new bytes, so a forced build is a new digest.
    catalog(project, testbed, stamp="RUN date +%s%N > /tmp/stamp\n")
    daemon = DaemonProcess(project).ready()
    daemon_for.append(daemon)
    daemon.idle()
    sock = daemon.socket
    for trial in range(3):
        before = {b["id"] for b in daemon.builds("stamp")}
        status, forced = api(sock, "POST", "/v1/builds", {"layers": ["stamp"], "force": True})
        assert status == 202
        time.sleep(0.01)
        status, plain = api(sock, "POST", "/v1/builds", {"layers": ["stamp"]})
        assert status == 202
        daemon.idle()
        new = [b for b in daemon.builds("stamp") if b["id"] not in before]
        assert [b["reason"] for b in new if b["outcome"] == "built"].count("forced") == 1, \
            (trial, new)
        for request in (forced["id"], plain["id"]):
            status, body = api(sock, "GET", f"/v1/builds/{request}")
            assert status == 200 and body["state"] == "done", body
    # A run whose only non-success is "superseded" is not reported as failed.
    finished = [e for e in daemon.events() if e["event"] == "run_finished"]
    assert all(e["outcome"] in ("ok", "deferred") for e in finished), finished


@pytest.mark.serial  # measures RSS and API latency: runs alone
def test_huge_logs_stay_bounded_on_disk_and_in_memory(
    project: Project, testbed: Testbed, daemon_for: list[DaemonProcess]
) -> None:
    catalog(project, testbed,
            noisy="RUN yes 0123456789abcdefghij0123456789abcdefghij | head -c 6000000\n")
    config = project.config.read_text().replace('dir = "state"',
                                                'dir = "state"\nlog_max_size = "1M"')
    project.config.write_text(config)
    daemon = DaemonProcess(project).ready()
    daemon_for.append(daemon)
    daemon.idle(180)
    noisy = daemon.builds("noisy")[0]
    log = Path(noisy["log_path"])
    assert log.stat().st_size <= 1024 * 1024 + 64 * 1024
    text = log.read_bytes()
    assert (b"the log passed its size cap" in text and text.rstrip().endswith(b"Storing "
                                                                              b"signatures")) \
        or b"0123456789" in text[-4096:] or b"Writing manifest" in text[-8192:]
    # A 200 MB log (an old build's, or a host with no cap) read by four clients
    # at once: streamed in chunks, RSS stays put and the daemon keeps answering.
    base = daemon.builds("base")[0]
    with Path(base["log_path"]).open("wb") as fh:
        for _ in range(200):
            fh.write(b"x" * (1024 * 1024 - 1) + b"\n")
    before = rss_kb(daemon.proc.pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_kb(daemon.proc.pid))
            time.sleep(0.05)

    def read_all() -> None:
        conn = UnixHTTPConnection(daemon.socket, timeout=120)
        conn.request("GET", f"/v1/builds/{base['id']}/log")
        resp = conn.getresponse()
        while resp.read(1 << 20):
            pass
        resp.close()
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    readers = [threading.Thread(target=read_all) for _ in range(4)]
    for reader in readers:
        reader.start()
    pings = []
    while any(r.is_alive() for r in readers):
        t0 = time.monotonic()
        assert api(daemon.socket, "GET", "/v1/_ping", timeout=5)[0] == 200
        pings.append(time.monotonic() - t0)
        time.sleep(0.1)
    for reader in readers:
        reader.join()
    stop.set()
    sampler.join()
    grew_mb = (max(peak) - before) / 1024
    print(f"4 readers of a 200 MB log: RSS {before / 1024:.0f} MB -> peak "
          f"{max(peak) / 1024:.0f} MB; slowest ping {max(pings, default=0) * 1000:.0f} ms")
    assert grew_mb < 40, grew_mb
    assert max(pings, default=0) < 1.0


def _image_file(registry: str, repository: str, reference: str, path: str,
                workdir: Path) -> bytes:
    """A file from the top layer of an image, read from the registry."""
    dest = workdir / f"img-{time.monotonic_ns()}"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{registry}/{repository}:{reference}", f"dir:{dest}"], check=True)
    import json

    manifest = json.loads((dest / "manifest.json").read_text())
    top = manifest["layers"][-1]["digest"].split(":", 1)[1]
    with tarfile.open(dest / top) as tar:
        member = tar.extractfile(path.lstrip("/"))
        assert member is not None
        return member.read()


def test_an_edit_while_the_parent_builds_never_lands_under_the_old_key(
    project: Project, testbed: Testbed, tmp_path: Path, daemon_for: list[DaemonProcess]
) -> None:
    namespace = catalog(project, testbed)
    project.layer("base", 'from = "upstream:seed"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo base; sleep 4\nUSER 1000\n")
    project.layer("child", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY data.txt /data.txt\n",
                  files={"data.txt": "old\n"})
    daemon = DaemonProcess(project).ready()
    daemon_for.append(daemon)
    wait_until(lambda: any(b["layer"] == "base" and b["outcome"] == "running"
                           for b in daemon.builds()), 60, 0.1, "the parent building")
    (project.layers / "child" / "data.txt").write_text("new\n")  # same size, during the run
    daemon.idle(180)
    db = sqlite3.connect(project.root / "state" / "state.db")
    key = db.execute("SELECT build_key FROM layers WHERE layer = 'child'").fetchone()[0]
    db.close()
    content = _image_file(testbed.registry, f"{namespace}/child", f"bk-{key}", "data.txt",
                          tmp_path)
    assert content == b"new\n"
    # Every key tag of child holds exactly what its key says: none holds "new" as "old".
    for build in daemon.builds("child"):
        if build["outcome"] == "built":
            data = _image_file(testbed.registry, f"{namespace}/child",
                               f"bk-{build['build_key']}", "data.txt", tmp_path)
            assert data == b"new\n", build


def test_mtime_restoring_mode_only_and_ignored_metadata_edits_rebuild(
    project: Project, testbed: Testbed, tmp_path: Path, daemon_for: list[DaemonProcess]
) -> None:
    catalog(project, testbed)
    project.layer("app", 'from = "base"\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /app\n",
                  files={"run.sh": "echo one\n",
                         # A common practice that must not blind the watcher.
                         ".dockerignore": "Dockerfile\nlayer.toml\n.dockerignore\n"})
    daemon = DaemonProcess(project).ready()
    daemon_for.append(daemon)
    daemon.idle()
    app = project.layers / "app"

    def rebuilt(count: int) -> None:
        wait_until(lambda: len([b for b in daemon.builds("app") if b["outcome"] == "built"])
                   >= count, 60, 0.2, f"app build #{count}")
        daemon.idle()

    # cp -p: the same size and the old mtime, different bytes
    other = tmp_path / "run.sh"
    other.write_text("echo two\n")
    info = (app / "run.sh").stat()
    os.utime(other, ns=(info.st_atime_ns, info.st_mtime_ns))
    subprocess.run(["cp", "-p", str(other), str(app / "run.sh")], check=True)
    rebuilt(2)
    os.chmod(app / "run.sh", 0o755)  # mode only
    rebuilt(3)
    (app / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /srv\n")
    rebuilt(4)
    (app / "layer.toml").write_text('from = "base"\ntags = ["2"]\n')
    wait_until(lambda: any(e["event"] == "catalog_reloaded" for e in daemon.events()), 30,
               what="layer.toml reload")


def test_upstream_outages_keep_the_daemon_up_on_the_last_known_value(
    project: Project, testbed: Testbed, daemon_for: list[DaemonProcess]
) -> None:
    from tests.integration.flaky_registry import FlakyRegistry

    with FlakyRegistry() as flaky:
        extra = (f'[upstream.flaky]\nimage = "{flaky.host}/lib/thing"\ntag = "1"\n'
                 'tls_verify = false\npoll = "1s"\n')
        catalog(project, testbed, extra=extra)
        project.layer("pinned", 'from = "base"\n[args]\nTHING = "{upstream.flaky.digest}"\n',
                      "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG THING\nRUN echo $THING\n")
        daemon = DaemonProcess(project).ready()
        daemon_for.append(daemon)
        daemon.idle()
        assert [b["outcome"] for b in daemon.builds("pinned")] == ["built"]
        for mode in ("hang-token", "500", "429", "no-digest-header", "ok"):
            flaky.mode = mode
            seen = flaky.requests
            wait_until(lambda seen=seen: flaky.requests > seen + 1, 60, 0.2,  # type: ignore[misc]
                       f"polls in mode {mode}")
            assert api(daemon.socket, "GET", "/v1/_ping")[0] == 200
            status = api(daemon.socket, "GET", "/v1/status")[1]["upstreams"]["flaky"]
            if mode in ("500", "429"):
                assert status["error"] and status["using_last_known"], status
                # A manual trigger during the outage builds on the last known value.
                api(daemon.socket, "POST", "/v1/builds", {"layers": ["pinned"]})
                daemon.idle()
                assert daemon.builds("pinned")[0]["outcome"] == "built"
        assert daemon.proc.poll() is None
        retry = [e for e in daemon.events() if e["event"] == "upstream_check_failed"
                 and "429" in e.get("error", "")]
        assert retry and all(e["retry_in_s"] >= 1.0 for e in retry)  # Retry-After honoured
        assert any(e["event"] == "upstream_recovered" for e in daemon.events())
        assert [b["outcome"] for b in daemon.builds("pinned")].count("failed") == 0


def test_an_unreadable_context_file_fails_its_layer_and_the_daemon_stays(
    project: Project, testbed: Testbed, daemon_for: list[DaemonProcess]
) -> None:
    catalog(project, testbed, fine="RUN true\n", broken="RUN true\n")
    target = project.layers / "broken" / "data"
    target.write_text("")
    # Root reads any mode; a file whose read fails (EIO) stands in for what a
    # non-root daemon meets with a root-owned file.
    mounted = subprocess.run(["mount", "--bind", "/proc/1/mem", str(target)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot bind-mount here to make an unreadable file")
    try:
        daemon = DaemonProcess(project).ready()
        daemon_for.append(daemon)
        daemon.idle()
        layers = {e["layer"]: e for e in api(daemon.socket, "GET", "/v1/layers")[1]["layers"]}
        assert layers["fine"]["last_outcome"] == "built"
        assert "cannot read" in (layers["broken"]["why"] or "") + \
            str(layers["broken"].get("error"))
        assert daemon.proc.poll() is None
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_stop_with_an_events_follower_and_reloads_at_once(
    project: Project, testbed: Testbed, daemon_for: list[DaemonProcess]
) -> None:
    catalog(project, testbed)
    daemon = DaemonProcess(project).ready()
    daemon_for.append(daemon)
    daemon.idle()
    tasks = api(daemon.socket, "GET", "/v1/status")[1]["tasks"]
    answers: list[int] = []

    def reload() -> None:
        answers.append(api(daemon.socket, "POST", "/v1/reload", timeout=60)[0])

    threads = [threading.Thread(target=reload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(3):
        reload()
    assert answers == [200] * 5
    daemon.idle()
    status = api(daemon.socket, "GET", "/v1/status")[1]
    assert list(status["upstreams"]) == ["seed"]
    assert status["tasks"] <= tasks  # no poller, watcher or reload task left behind
    follower = UnixHTTPConnection(daemon.socket, timeout=30)
    follower.request("GET", "/v1/events")
    stream = follower.getresponse()
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, 30) == 0
    assert time.monotonic() - started < 5
    with contextlib.suppress(Exception):
        stream.read()
    stream.close()
    follower.close()


def test_one_owner_per_state_dir(project: Project, testbed: Testbed,
                                 daemon_for: list[DaemonProcess]) -> None:
    catalog(project, testbed)
    daemon = DaemonProcess(project).ready()
    daemon_for.append(daemon)
    daemon.idle()
    proc = project.cli("build")
    assert proc.returncode == 1
    assert f"in use by daemon (pid {daemon.proc.pid})" in proc.stderr
    assert "orchestrator trigger" in proc.stderr
    assert project.cli("plan").returncode == 0  # reading is fine


def test_an_injected_git_tag_is_refused(project: Project, testbed: Testbed,
                                        tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True, env=env)
    evil = 'v9",name=attacker.example/loot,"x='
    subprocess.run(["git", "-C", str(work), "tag", evil], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", str(remote), f"refs/tags/{evil}"],
                   check=True, env=env)
    catalog(project, testbed, extra=f'[upstream.tool]\ngit = "{remote}"\n'
                                    'track = "regex:v.*"\n')
    project.layer("tooled", 'from = "base"\ntags = ["{upstream.tool.tag}"]\n')
    proc = project.cli("build")
    assert proc.returncode in (1, 2), proc.stderr
    assert "not a valid tag" in proc.stdout + proc.stderr
    assert "attacker.example" not in subprocess.run(
        ["curl", "-s", f"http://{testbed.registry}/v2/_catalog"], capture_output=True,
        text=True).stdout


@pytest.mark.parametrize("backend", ["buildah", "buildkit"])
def test_a_forced_rebuild_of_unchanged_inputs(project: Project, testbed: Testbed,
                                              backend: str) -> None:
    """buildah: the same digest, and the child is not rebuilt (early cutoff).
    BuildKit in Docker 20.10 cannot fix its timestamps: a new digest, said by plan."""
    catalog(project, testbed)
    project.layer("child", 'from = "base"\n')
    config = project.config.read_text().replace('backend = "buildah"', f'backend = "{backend}"')
    config += f'\n[build.buildkit]\ndocker_host = "{testbed.docker_host}"\n'
    project.config.write_text(config)
    code, first, err = project.cli_json("build")
    assert code == 0, err
    digest = {e["layer"]: e["digest"] for e in first["layers"]}
    code, forced, err = project.cli_json("build", "base", "--force")
    assert code == 0, err
    outcome = {e["layer"]: e["outcome"] for e in forced["layers"]}
    again = {e["layer"]: e["digest"] for e in forced["layers"]}
    print(f"{backend}: forced rebuild of base: {digest['base'][:19]} -> {again['base'][:19]}")
    if backend == "buildah":
        assert again["base"] == digest["base"]
        assert outcome["child"] == "reused"  # the cascade stopped at the same digest
    else:
        assert again["base"] != digest["base"]
        plan = project.cli("plan")
        assert "not reproducible" in plan.stdout
    assert outcome["base"] == "built"
