"""Snapshots in the daemon are made and removed off the event loop, and nothing
is left behind by a cancelled build or a context that changed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.snapshot import SMALL_CONTEXT, ContextChanged, Snapshots, scratch_path
from orchestrator.catalog import context
from orchestrator.core.model import Layer

BIG = 192 << 20  # enough to take a good part of a second to copy and hash


def layer_at(folder: Path) -> Layer:
    return Layer(id="l", name="l", folder=folder, dockerfile=folder / "Dockerfile",
                 image="l", parent=None, upstream="seed")


def _plain_layer(tmp_path: Path) -> tuple[Layer, context.Context]:
    folder = tmp_path / "layer"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    layer = layer_at(folder)
    return layer, context.read_context(layer)


@pytest.fixture
def big_layer(tmp_path: Path) -> Layer:
    folder = tmp_path / "layer"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /data\n")
    with open(folder / "blob.bin", "wb") as out:
        out.write(os.urandom(1 << 20) * (BIG >> 20))
    return layer_at(folder)


async def _max_gap_while(work: asyncio.Future[None]) -> float:
    """The longest the event loop went without running a 5 ms ticker."""
    gap, last = 0.0, time.perf_counter()
    while not work.done():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    await work
    return gap


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        for _ in iter(condition, True):
            await asyncio.sleep(0.001)


def test_the_daemon_loop_keeps_running_while_a_large_context_is_copied(
        big_layer: Layer, tmp_path: Path) -> None:
    ctx = context.read_context(big_layer)
    dest = tmp_path / "builds" / "b1"

    async def build() -> None:
        async with Snapshots(inline=False).snapshot(big_layer, ctx, dest) as (root, _):
            assert (root / "blob.bin").stat().st_size == BIG

    async def main() -> tuple[float, float]:
        started = time.perf_counter()
        gap = await _max_gap_while(asyncio.ensure_future(build()))
        return gap, time.perf_counter() - started

    gap, took = asyncio.run(main())
    assert not dest.exists()
    # Made on the loop, the gap is the whole copy; off it, a few switch intervals.
    assert gap < took / 3, f"the loop stalled {gap:.3f} s of a {took:.3f} s snapshot"


def test_a_build_cancelled_while_its_snapshot_is_copied_leaves_no_files(
        big_layer: Layer, tmp_path: Path) -> None:
    ctx = context.read_context(big_layer)
    dest = tmp_path / "builds" / "b2"

    async def build() -> None:
        async with Snapshots(inline=False).snapshot(big_layer, ctx, dest):
            raise AssertionError("cancelled before the snapshot was ready")

    async def main() -> None:
        task = asyncio.ensure_future(build())
        await _until(dest.exists)  # the copy has begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: not dest.exists())  # it finishes in its thread, then goes

    asyncio.run(main())
    assert not dest.exists()


@pytest.mark.parametrize("inline", [True, False])
def test_a_context_changed_after_hashing_leaves_nothing(tmp_path: Path, inline: bool) -> None:
    folder = tmp_path / "layer"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /app\n")
    (folder / "a.txt").write_text("hashed\n")
    (folder / "z.txt").write_text("hashed\n")
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    (folder / "z.txt").write_text("edited\n")  # a.txt is copied before z.txt is refused
    dest = tmp_path / "builds" / "b3"

    async def build() -> None:
        async with Snapshots(inline=inline).snapshot(layer, ctx, dest):
            raise AssertionError("the engine must not see the edit")

    with pytest.raises(ContextChanged, match=r"z\.txt changed"):
        asyncio.run(build())
    assert not dest.exists()


def test_the_context_folder_keeps_its_own_mode_whatever_the_umask(tmp_path: Path) -> None:
    from orchestrator.build.snapshot import make_snapshot

    folder = tmp_path / "layer"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /app\n")
    os.chmod(folder, 0o755)
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    old = os.umask(0o077)  # stricter than the service's 0027
    try:
        root, dockerfile = make_snapshot(layer, ctx, tmp_path / "builds" / "b4")
    finally:
        os.umask(old)
    assert os.stat(root).st_mode & 0o7777 == 0o755
    # The engine must not filter the copy again: an empty ignore file of its own.
    assert (dockerfile.parent / "Dockerfile.dockerignore").read_bytes() == b""


def test_a_dockerfile_turned_fifo_after_hashing_is_a_change_not_a_hang(tmp_path: Path) -> None:
    layer, ctx = _plain_layer(tmp_path)
    layer.dockerfile.unlink()
    os.mkfifo(layer.dockerfile)  # no writer: a blocking open would wait for good
    dest = tmp_path / "builds" / "b5"

    async def build() -> None:
        async with Snapshots(inline=False).snapshot(layer, ctx, dest):
            raise AssertionError("the engine must not get a fifo")

    async def main() -> None:
        async with asyncio.timeout(10):
            await build()

    with pytest.raises(ContextChanged):
        asyncio.run(main())
    assert not dest.exists()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "")
                  for p in root.rglob("*"))


@pytest.mark.parametrize("inline", [True, False])
def test_a_kept_folder_gives_the_next_build_only_its_own_files(tmp_path: Path,
                                                              inline: bool) -> None:
    """Folders are emptied and reused between builds (directory churn is the cost
    on ext4); whatever the last build left there must never reach the next."""
    first = tmp_path / "first"
    (first / "sub").mkdir(parents=True)
    (first / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /a\n")
    (first / "sub" / "x.txt").write_text("x\n")
    os.chmod(first / "sub", 0o555)  # copied read-only: emptying must still work
    os.chmod(first, 0o555)
    second = tmp_path / "second"
    second.mkdir()
    (second / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /b\n")
    (second / "b.txt").write_text("b\n")
    builds = tmp_path / "builds"
    snapshots = Snapshots(inline=inline)

    async def main() -> None:
        layer = layer_at(first)
        async with snapshots.snapshot(layer, context.read_context(layer),
                                      builds / "b1") as (root, dockerfile):
            assert _tree(root) == ["Dockerfile", "sub/", "sub/x.txt"]
            # What a build may leave beside the snapshot, or (never seen, but the
            # key is at stake) inside it.
            (dockerfile.parent / "secrets").mkdir(mode=0o700)
            (dockerfile.parent / "secrets" / "token").write_text("s3cret")
            os.chmod(root, 0o755)
            (root / "stray.txt").write_text("left by someone\n")
            os.chmod(root, 0o555)
        layer = layer_at(second)
        async with snapshots.snapshot(layer, context.read_context(layer),
                                      builds / "b2") as (root, dockerfile):
            assert root == builds / "b2" / "context"  # a path of its own
            assert _tree(root) == ["Dockerfile", "b.txt"]
            assert _tree(dockerfile.parent) == ["Dockerfile", "Dockerfile.dockerignore",
                                                "context/", "context/Dockerfile",
                                                "context/b.txt"]
            assert (dockerfile.parent / "Dockerfile.dockerignore").read_bytes() == b""
            assert not (builds / "b1").exists()
        assert [p.name for p in builds.iterdir()] != []  # kept for a next build
        await asyncio.to_thread(snapshots.close)

    asyncio.run(main())
    os.chmod(first, 0o755)
    os.chmod(first / "sub", 0o755)
    assert list(builds.iterdir()) == []


def test_a_kept_folder_that_is_not_empty_shaped_is_removed_not_reused(tmp_path: Path) -> None:
    layer, ctx = _plain_layer(tmp_path)
    builds = tmp_path / "builds"
    snapshots = Snapshots(inline=True)

    async def main() -> None:
        async with snapshots.snapshot(layer, ctx, builds / "b1") as (_, dockerfile):
            # The empty ignore file written to: reusing the folder would filter
            # the next build's context with it.
            (dockerfile.parent / "Dockerfile.dockerignore").write_text("*\n")
        assert list(builds.iterdir()) == []
        async with snapshots.snapshot(layer, ctx, builds / "b2") as (_, dockerfile):
            assert (dockerfile.parent / "Dockerfile.dockerignore").read_bytes() == b""
        snapshots.close()

    asyncio.run(main())
    assert list(builds.iterdir()) == []


def test_two_runs_sharing_the_builds_folder_never_share_a_kept_folder(tmp_path: Path) -> None:
    layer, ctx = _plain_layer(tmp_path)
    builds = tmp_path / "builds"
    one, two = Snapshots(inline=True), Snapshots(inline=True)

    async def main() -> None:
        for n in range(3):
            for run in (one, two):
                async with run.snapshot(layer, ctx, builds / f"b{n}-{id(run)}"):
                    pass
        assert len(list(builds.iterdir())) == 2  # one kept folder each, not one shared
        one.close()
        two.close()

    asyncio.run(main())
    assert list(builds.iterdir()) == []


def _scratch_in(tmp_path: Path) -> Path:
    """The scratch folder a state dir in ``tmp_path`` gets, under ``shm`` there."""
    scratch = scratch_path(str(tmp_path / "shm"), tmp_path / "state")
    assert scratch is not None
    (tmp_path / "shm").mkdir()
    return scratch


def _small_and_large(tmp_path: Path) -> tuple[Layer, Layer]:
    small, large = tmp_path / "small", tmp_path / "large"
    for folder in (small, large):
        folder.mkdir()
        (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /a\n")
    (large / "blob.bin").write_bytes(b"x" * (SMALL_CONTEXT + 1))
    return layer_at(small), layer_at(large)


def test_small_contexts_go_to_the_scratch_folder_and_large_ones_stay_on_disk(
        tmp_path: Path) -> None:
    small, large = _small_and_large(tmp_path)
    scratch = _scratch_in(tmp_path)
    assert scratch.parent == tmp_path / "shm"
    builds = tmp_path / "state" / "builds"
    snapshots = Snapshots(inline=True, scratch=lambda: scratch)

    async def main() -> None:
        async with snapshots.snapshot(small, context.read_context(small),
                                      builds / "b1") as (root, _):
            assert root == scratch / "b1" / "context" and (root / "Dockerfile").is_file()
            assert os.stat(scratch).st_mode & 0o777 == 0o700  # /dev/shm is shared
        async with snapshots.snapshot(large, context.read_context(large),
                                      builds / "b2") as (root, _):
            assert root == builds / "b2" / "context"
            assert (root / "blob.bin").stat().st_size == SMALL_CONTEXT + 1
        snapshots.close()

    asyncio.run(main())
    assert not scratch.exists() and list(builds.iterdir()) == []


@pytest.mark.parametrize("planted", ["link", "open folder"])
def test_a_scratch_folder_someone_else_planted_is_not_used(tmp_path: Path,
                                                          planted: str) -> None:
    small, _ = _small_and_large(tmp_path)
    scratch = _scratch_in(tmp_path)
    if planted == "link":  # /dev/shm is world-writable: the name can be taken first
        (tmp_path / "elsewhere").mkdir()
        scratch.symlink_to(tmp_path / "elsewhere")
    else:
        scratch.mkdir(mode=0o777)
        os.chmod(scratch, 0o777)
    builds = tmp_path / "state" / "builds"
    snapshots = Snapshots(inline=True, scratch=lambda: scratch)

    async def main() -> None:
        async with snapshots.snapshot(small, context.read_context(small),
                                      builds / "b1") as (root, _):
            assert root == builds / "b1" / "context"
        snapshots.close()

    asyncio.run(main())
    if planted == "link":
        assert not any((tmp_path / "elsewhere").iterdir())


def test_crash_recovery_clears_the_scratch_folder_too(tmp_path: Path) -> None:
    from orchestrator.build.runs import clear_scratch

    small, _ = _small_and_large(tmp_path)
    scratch = _scratch_in(tmp_path)
    builds = tmp_path / "state" / "builds"
    snapshots = Snapshots(inline=True, scratch=lambda: scratch)

    async def killed() -> None:  # the run dies with its snapshot in place
        async with snapshots.snapshot(small, context.read_context(small), builds / "b1"):
            (scratch / "b1" / "secrets").mkdir()
            (scratch / "b1" / "secrets" / "token").write_text("s3cret")
            assert clear_scratch(tmp_path / "state", scratch) == 1  # the next start
            assert not scratch.exists()

    asyncio.run(killed())


def test_auto_scratch_is_a_private_folder_on_a_tmpfs_or_none(tmp_path: Path) -> None:
    assert scratch_path("none", tmp_path) is None
    found = scratch_path("auto", tmp_path)
    assert found is None or (found.parent == Path("/dev/shm")
                             and found.name.startswith(f"orchestrator-{os.geteuid()}-"))
    assert scratch_path("auto", tmp_path) == found  # the same state dir, the same folder
    assert scratch_path("auto", tmp_path / "other") != found or found is None


_WITHOUT_OVERRIDE = r'''
import asyncio, os, sys
from pathlib import Path
from orchestrator.build.snapshot import Snapshots
from orchestrator.catalog import context
from orchestrator.core.model import Layer

def layer_at(folder):
    return Layer(id="l", name="l", folder=folder, dockerfile=folder / "Dockerfile",
                 image="l", parent=None, upstream="seed")

first, second, builds = (Path(p) for p in sys.argv[1:4])
snapshots = Snapshots(inline=True)

async def main():
    for n, folder in enumerate((first, second)):
        layer = layer_at(folder)
        async with snapshots.snapshot(layer, context.read_context(layer),
                                      builds / f"b{n}") as (root, _):
            print(sorted(str(p.relative_to(root)) for p in root.rglob("*")))
    snapshots.close()

asyncio.run(main())
'''


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="drops root's override of file modes with setpriv")
def test_read_only_folders_copied_by_one_build_never_reach_the_next_without_privilege(
        tmp_path: Path) -> None:
    """As the service's own user does (no capabilities), a copied read-only
    folder resists removal; the kept folder must then be dropped, not reused.
    Run as root without CAP_DAC_OVERRIDE / CAP_FOWNER: file modes apply."""
    import subprocess
    import sys

    first, second = tmp_path / "first", tmp_path / "second"
    (first / "vendor").mkdir(parents=True)
    (first / "Dockerfile").write_text("FROM x\nCOPY . /a\n")
    (first / "vendor" / "private.key").write_text("k")
    second.mkdir()
    (second / "Dockerfile").write_text("FROM x\nCOPY . /b\n")
    os.chmod(first / "vendor", 0o555)
    (tmp_path / "builds").mkdir()
    out = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
                          sys.executable, "-c", _WITHOUT_OVERRIDE, str(first), str(second),
                          str(tmp_path / "builds")],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    seen = out.stdout.splitlines()
    assert seen == ["['Dockerfile', 'vendor', 'vendor/private.key']", "['Dockerfile']"]
    assert list((tmp_path / "builds").iterdir()) == []
    os.chmod(first / "vendor", 0o755)


def test_a_full_tmpfs_sends_the_snapshot_to_disk(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from orchestrator.build import snapshot

    small, _ = _small_and_large(tmp_path)
    scratch = _scratch_in(tmp_path)
    real_fill = snapshot._fill

    def fill(layer: Layer, ctx: context.Context, folder: str, source: str) -> Any:
        if folder.startswith(str(scratch)):
            (Path(folder) / "context" / "partial").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fill(layer, ctx, folder, source)

    monkeypatch.setattr(snapshot, "_fill", fill)
    builds = tmp_path / "state" / "builds"
    snapshots = Snapshots(inline=True, scratch=lambda: scratch)

    async def main() -> None:
        async with snapshots.snapshot(small, context.read_context(small),
                                      builds / "b1") as (root, _):
            assert root == builds / "b1" / "context"
            assert _tree(root) == ["Dockerfile"]
            assert list(scratch.iterdir()) == []  # the partial copy is gone
        snapshots.close()

    asyncio.run(main())
    assert list(builds.iterdir()) == []


def test_a_snapshot_after_the_run_closed_does_not_make_the_scratch_folder_again(
        tmp_path: Path) -> None:
    small, _ = _small_and_large(tmp_path)
    scratch = _scratch_in(tmp_path)
    builds = tmp_path / "state" / "builds"
    snapshots = Snapshots(inline=True, scratch=lambda: scratch)

    async def main() -> None:
        ctx = context.read_context(small)
        async with snapshots.snapshot(small, ctx, builds / "b1"):
            pass
        snapshots.close()
        assert not scratch.exists()
        # A cancelled build's copy, still queued when the run ended, runs now.
        async with snapshots.snapshot(small, ctx, builds / "b2") as (root, _):
            assert root == builds / "b2" / "context"
        assert not scratch.exists()

    asyncio.run(main())


def test_a_scratch_folder_under_a_shared_folder_without_the_sticky_bit_is_refused(
        tmp_path: Path) -> None:
    from orchestrator.build.snapshot import own_private_folder

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone could swap our folder for a link
    assert not own_private_folder(shared / "orchestrator-x")
    os.chmod(shared, 0o1777)  # as /dev/shm: only the owner may rename it
    assert own_private_folder(shared / "orchestrator-x")


def test_a_kept_folder_whose_context_became_a_link_is_dropped(tmp_path: Path) -> None:
    layer, ctx = _plain_layer(tmp_path)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "keep.txt").write_text("mine")
    builds = tmp_path / "builds"
    snapshots = Snapshots(inline=True)

    async def main() -> None:
        async with snapshots.snapshot(layer, ctx, builds / "b1") as (root, _):
            os.chmod(root, 0o755)
            for child in root.iterdir():
                child.unlink()
            root.rmdir()
            root.symlink_to(tmp_path / "precious")
        snapshots.close()

    asyncio.run(main())
    assert (tmp_path / "precious" / "keep.txt").read_text() == "mine"
    assert list(builds.iterdir()) == []


def test_the_snapshot_copies_from_where_the_scan_read(tmp_path: Path) -> None:
    """An atomic deploy repoints the layers folder between the scan and the
    build: the build copies what was hashed, from where it was hashed."""
    for release, text in (("a", "release a\n"), ("b", "release b\n")):
        folder = tmp_path / release / "layer"
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /x\n")
        (folder / "app.txt").write_text(text)
    (tmp_path / "current").symlink_to(tmp_path / "a")
    layer = layer_at(tmp_path / "current" / "layer")
    ctx = context.read_context(layer)
    (tmp_path / "next").symlink_to(tmp_path / "b")
    os.replace(tmp_path / "next", tmp_path / "current")

    async def main() -> None:
        snapshots = Snapshots(inline=True)
        async with snapshots.snapshot(layer, ctx, tmp_path / "builds" / "b1") as (root, _):
            assert (root / "app.txt").read_text() == "release a\n"
        snapshots.close()

    asyncio.run(main())


@pytest.mark.parametrize("ignored", [False, True])
def test_the_engine_gets_the_hashed_dockerfile_whether_or_not_the_context_holds_it(
        tmp_path: Path, ignored: bool) -> None:
    """In its context the Dockerfile is the copy just verified, hard-linked;
    ignored by .dockerignore it is copied on its own. Either way: the bytes the
    key was made from, and an edit since the scan is refused."""
    folder = tmp_path / "layer"
    folder.mkdir()
    text = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /app\n"
    (folder / "Dockerfile").write_text(text)
    (folder / "a.txt").write_text("a\n")
    if ignored:
        (folder / ".dockerignore").write_text("Dockerfile\n")
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    assert any(e.path == "Dockerfile" for e in ctx.files) is not ignored

    async def take(snapshots: Snapshots, name: str) -> tuple[str, int]:
        async with snapshots.snapshot(layer, ctx, tmp_path / "builds" / name) as (root, df):
            shared = os.stat(df).st_nlink
            if not ignored:
                assert os.path.samefile(df, root / "Dockerfile")
            return df.read_text(), shared

    snapshots = Snapshots(inline=True)
    assert asyncio.run(take(snapshots, "b1")) == (text, 1 if ignored else 2)
    (folder / "Dockerfile").write_text(text + "RUN touch /edited\n")
    with pytest.raises(ContextChanged, match="Dockerfile changed"):
        asyncio.run(take(snapshots, "b2"))
    snapshots.close()
    assert not (tmp_path / "builds").exists() or not any((tmp_path / "builds").iterdir())


def test_a_build_folder_is_private_and_an_open_dockerfile_is_copied_not_linked(
        tmp_path: Path) -> None:
    """The copies keep their sources' modes, so nobody but the owner may reach
    them (0700 folder, made or reused); and the Dockerfile the engine reads is
    never an inode others may write: a 0666 one is copied as 0644."""
    folder = tmp_path / "layer"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /app\n")
    os.chmod(folder / "Dockerfile", 0o666)
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    builds = tmp_path / "builds"
    snapshots = Snapshots(inline=True)

    async def main() -> None:
        for name in ("b1", "b2"):  # b2 reuses b1's folder
            async with snapshots.snapshot(layer, ctx, builds / name) as (root, dockerfile):
                assert os.stat(builds / name).st_mode & 0o777 == 0o700
                assert os.stat(root / "Dockerfile").st_mode & 0o777 == 0o666  # as keyed
                info = os.stat(dockerfile)
                assert (info.st_mode & 0o777, info.st_nlink) == (0o644, 1)
        snapshots.close()

    asyncio.run(main())


@pytest.mark.parametrize("stale", ["a.txt", "Dockerfile"])
def test_a_digest_the_cache_got_wrong_is_forgotten_when_the_copy_disagrees(
        tmp_path: Path, stale: str) -> None:
    """A same-size rewrite within one tick of a coarse clock leaves the stat
    stamp as it was, so the cache serves the old digest. The snapshot's own hash
    disagrees: the build is refused, and the next read hashes the file."""
    from orchestrator.catalog import digests

    folder = tmp_path / "layer"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /app\n")
    (folder / "a.txt").write_text("new\n")
    (folder / ".dockerignore").write_text("Dockerfile\n")  # the Dockerfile copied alone
    path = folder / stale
    info = os.stat(path)
    digests.remember(str(path), info, info, b"old bytes of the same stamp")  # what a tick hides
    layer = layer_at(folder)
    snapshots = Snapshots(inline=True)

    async def take(ctx: context.Context, name: str) -> None:
        async with snapshots.snapshot(layer, ctx, tmp_path / "builds" / name):
            pass

    with pytest.raises(ContextChanged, match=stale):
        asyncio.run(take(context.read_context(layer), "b1"))
    fresh = context.read_context(layer)
    asyncio.run(take(fresh, "b2"))
    snapshots.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in \
        {fresh.dockerfile, *(e.digest for e in fresh.files)}


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 5 << 19])
def test_a_copy_holds_exactly_the_bytes_it_was_hashed_from(tmp_path: Path, size: int) -> None:
    """Copied up to the size fstat saw (one read for a small file): every size
    around the read chunk gives the whole file, its digest, its mode and times."""
    from orchestrator.build.snapshot import _copy_hashed

    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(size)
    src.write_bytes(data)
    os.utime(src, ns=(1_000_000_000, 2_000_000_000))
    assert _copy_hashed(str(src), str(dst), 0o640) == hashlib.sha256(data).hexdigest()
    assert dst.read_bytes() == data
    assert dst.stat().st_mode & 0o7777 == 0o640 and dst.stat().st_mtime_ns == 2_000_000_000


def test_a_context_that_cannot_be_emptied_is_removed_not_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Something left in the context after emptying (a file it could not remove,
    or one that appeared meanwhile): the folder is not kept for the next build."""
    from orchestrator.build import snapshot

    layer, ctx = _plain_layer(tmp_path)
    builds = tmp_path / "builds"
    snapshots = Snapshots(inline=True)
    remove = snapshot._remove_entry

    def stubborn(entry: os.DirEntry[str]) -> None:
        if entry.name != "stuck":
            remove(entry)

    async def main() -> None:
        async with snapshots.snapshot(layer, ctx, builds / "b1") as (context_dir, _):
            (context_dir / "stuck").write_text("left behind\n")
            monkeypatch.setattr(snapshot, "_remove_entry", stubborn)
        monkeypatch.setattr(snapshot, "_remove_entry", remove)
        assert list(builds.iterdir()) == []  # removed, not kept
        async with snapshots.snapshot(layer, ctx, builds / "b2") as (context_dir, _):
            assert sorted(p.name for p in context_dir.iterdir()) == ["Dockerfile"]
        snapshots.close()

    asyncio.run(main())
    assert list(builds.iterdir()) == []
