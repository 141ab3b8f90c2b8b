"""A context its users can write to is read by a daemon running as root: a folder,
a file or the Dockerfile swapped for a link at any moment of the scan or the
copy must never bring an outside file into the key, the snapshot or the daemon's
hands. Each swap is made by a hook at an exact moment (tests/swaps.py), at
several depths; what the daemon opened outside is recorded and must be nothing."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from orchestrator.build import snapshot
from orchestrator.build.snapshot import ContextChanged, Snapshots, make_snapshot, remove_tree
from orchestrator.catalog import context
from orchestrator.catalog.layers import dockerfile_texts
from orchestrator.core.errors import InputError
from orchestrator.core.model import Catalog, Layer
from tests.swaps import ORIGINAL, SECRET, Tripwire, files_below, swap_back, swap_for_link

SCAN, COPY = "orchestrator.catalog", "orchestrator.build.snapshot"
CHAIN = ("d1", "d2", "d3")  # the context holds d1/d2/d3/file
DOCKERFILE = b"FROM scratch\nCOPY . /ctx/\n"


def layer_at(folder: Path) -> Layer:
    return Layer(id="l", name="l", folder=folder, dockerfile=folder / "Dockerfile",
                 image="l", parent=None, upstream="seed")


def secret_digest() -> str:
    return hashlib.sha256(SECRET).hexdigest()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "layer"
    (folder / "/".join(CHAIN)).mkdir(parents=True)
    (folder / "/".join(CHAIN) / "file").write_bytes(ORIGINAL)
    (folder / "Dockerfile").write_bytes(DOCKERFILE)
    return folder


def outside_for(tmp_path: Path, depth: int) -> Path:
    """A folder outside the context laid out as the context is below the folder
    swapped at ``depth``, every file holding the secret: a link put there
    leads a path-following reader straight to it."""
    outside = tmp_path / "outside"
    below = outside.joinpath(*CHAIN[depth:])
    below.mkdir(parents=True)
    (below / "file").write_bytes(SECRET)
    (outside / "secret").write_bytes(SECRET)
    return outside


def swapped(folder: Path, depth: int) -> Path:
    return folder.joinpath(*CHAIN[:depth])


def assert_nothing_left_the_outside(watch: Tripwire, ctx: context.Context | None,
                                    copied: Path | None) -> None:
    assert watch.opened_outside == []
    if ctx is not None:
        assert secret_digest() not in {e.digest for e in ctx.files}
    if copied is not None:
        assert SECRET not in files_below(copied).values()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_folder_swapped_for_a_link_during_the_scan_is_never_entered(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    """Listed as a folder, a link by the time the scan descends into it: it is
    not entered (nor sent: it changed while it was read), and nothing below
    the link is hashed."""
    outside = outside_for(tmp_path, depth)
    target = swapped(folder, depth)
    watch = Tripwire(monkeypatch, outside)
    watch.after_listing(SCAN, target.name, lambda: swap_for_link(target, outside))
    ctx = context.read_context(layer_at(folder))
    assert watch.fired == [f"{SCAN}:{target.name}"]
    assert not any(e.path.startswith("/".join(CHAIN[:depth]) + "/") for e in ctx.files)
    copy = make_snapshot(layer_at(folder), ctx, tmp_path / "snap")[0]
    assert_nothing_left_the_outside(watch, ctx, copy)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_folder_swapped_for_a_link_during_the_copy_is_never_read_through(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    """Hashed as it was; swapped for a link after the copy entered it, right
    before the file below is opened: the copy reads the folder it opened (moved
    aside, still in the context), never the link's target."""
    outside = outside_for(tmp_path, depth)
    target = swapped(folder, depth)
    ctx = context.read_context(layer_at(folder))
    watch = Tripwire(monkeypatch, outside)
    watch.before_open(COPY, "file", lambda: swap_for_link(target, outside))
    try:
        copy: Path | None = make_snapshot(layer_at(folder), ctx, tmp_path / "snap")[0]
    except ContextChanged:
        copy = None
    assert watch.fired == [f"{COPY}:file"]
    assert_nothing_left_the_outside(watch, ctx, copy)
    if copy is not None:
        assert (copy / "/".join(CHAIN) / "file").read_bytes() == ORIGINAL


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_folder_swapped_for_a_link_between_the_scan_and_the_copy_is_a_change(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    outside = outside_for(tmp_path, depth)
    target = swapped(folder, depth)
    ctx = context.read_context(layer_at(folder))
    swap_for_link(target, outside)
    watch = Tripwire(monkeypatch, outside)
    with pytest.raises(ContextChanged, match="/".join(CHAIN[:depth]) + "/ changed"):
        make_snapshot(layer_at(folder), ctx, tmp_path / "snap")
    assert_nothing_left_the_outside(watch, ctx, None)
    assert not (tmp_path / "snap").exists() or SECRET not in files_below(tmp_path / "snap").values()
    # Read again, the link is what the context holds now: refused, naming it.
    with pytest.raises(InputError, match="symlink escapes the build context"):
        context.read_context(layer_at(folder))
    assert watch.opened_outside == []


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_folder_swapped_during_the_scan_back_and_again_during_the_copy(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    """The whole race of the report: a link while the scan descends (so a
    path-following scan hashes the outside file), the real folder again when the
    copy checks it, a link again when the file below is opened (so a
    path-following copy finds the bytes it was told to expect). Nothing of the
    outside may reach the snapshot."""
    outside = outside_for(tmp_path, depth)
    target = swapped(folder, depth)
    watch = Tripwire(monkeypatch, outside)
    watch.after_listing(SCAN, target.name, lambda: swap_for_link(target, outside))
    ctx = context.read_context(layer_at(folder))
    swap_back(target)
    watch.before_open(COPY, "file", lambda: swap_for_link(target, outside))
    try:
        copy: Path | None = make_snapshot(layer_at(folder), ctx, tmp_path / "snap")[0]
    except ContextChanged:
        copy = None
    assert_nothing_left_the_outside(watch, ctx, copy)


def test_a_file_swapped_for_a_link_during_the_scan_is_not_read(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listed (and lstat-ed) as a regular file, a link when it is opened to be
    hashed: not read through, not sent."""
    outside = outside_for(tmp_path, 3)
    target = folder / "/".join(CHAIN) / "file"
    watch = Tripwire(monkeypatch, outside)
    watch.before_open(SCAN, "file", lambda: swap_for_link(target, outside / "secret"))
    try:
        ctx: context.Context | None = context.read_context(layer_at(folder))
    except InputError as exc:  # the link seen as one: escapes the context
        assert "escapes" in str(exc) or "link out of" in str(exc)
        ctx = None
    assert watch.fired == [f"{SCAN}:file"]
    assert_nothing_left_the_outside(watch, ctx, None)
    if ctx is not None:
        assert "/".join((*CHAIN, "file")) not in {e.path for e in ctx.files}


@pytest.mark.parametrize("when", ["between the scan and the copy", "during the copy"])
def test_a_file_swapped_for_a_link_after_the_scan_is_a_change(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    outside = outside_for(tmp_path, 3)
    target = folder / "/".join(CHAIN) / "file"
    ctx = context.read_context(layer_at(folder))
    watch = Tripwire(monkeypatch, outside)
    if when == "during the copy":
        watch.before_open(COPY, "file", lambda: swap_for_link(target, outside / "secret"))
    else:
        swap_for_link(target, outside / "secret")
    with pytest.raises(ContextChanged, match="file changed"):
        make_snapshot(layer_at(folder), ctx, tmp_path / "snap")
    assert_nothing_left_the_outside(watch, ctx, None)


def test_a_dockerfile_that_is_a_link_out_of_its_context_is_never_read(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon reads the Dockerfile to load, key and copy it: one in the
    context that links out of it (to /etc/shadow, say) is refused, unread."""
    outside = outside_for(tmp_path, 3)
    (folder / "Dockerfile").unlink()
    (folder / "Dockerfile").symlink_to(outside / "secret")
    layer = layer_at(folder)
    watch = Tripwire(monkeypatch, outside)
    for reader in (lambda: context.read_context(layer),
                   lambda: dockerfile_texts(Catalog(layers={"l": layer}, upstreams={}))):
        with pytest.raises(InputError, match=r"Dockerfile: a link out of .*-> .*secret\)"):
            reader()
    assert watch.opened_outside == []


@pytest.mark.parametrize("ignored", [False, True])
def test_a_dockerfile_swapped_for_a_link_between_hash_and_copy_is_a_change(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ignored: bool) -> None:
    """In the context the Dockerfile is its verified copy; ignored, it is copied
    on its own, from inside the context only. Either way, a link swapped in
    after it was hashed is a change, and its target is never opened."""
    outside = outside_for(tmp_path, 3)
    (outside / "Dockerfile").write_bytes(DOCKERFILE)  # the same bytes: no digest tells
    if ignored:
        (folder / ".dockerignore").write_text("Dockerfile\n")
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    swap_for_link(folder / "Dockerfile", outside / "Dockerfile")
    watch = Tripwire(monkeypatch, outside)
    with pytest.raises(ContextChanged, match="Dockerfile changed"):
        make_snapshot(layer, ctx, tmp_path / "snap")
    assert watch.opened_outside == []


def test_an_ignore_file_that_links_out_of_the_context_is_refused_unread(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Treating it as absent would send what it hides: refused, naming it."""
    outside = outside_for(tmp_path, 3)
    (folder / ".dockerignore").symlink_to(outside / "secret")
    layer = layer_at(folder)
    watch = Tripwire(monkeypatch, outside)
    with pytest.raises(InputError, match=r"\.dockerignore: a link out of"):
        context.read_context(layer)
    with pytest.raises(InputError, match=r"\.dockerignore: a link out of"):
        context.ignore_file(layer, ("buildah",))  # the daemon's probe, without a listing
    assert watch.opened_outside == []


def test_links_that_stay_inside_the_context_still_lead_where_they_point(
        folder: Path, tmp_path: Path) -> None:
    """A Dockerfile or ignore file linked within the context (through a folder
    link too, and by an absolute path inside it) is read as before."""
    (folder / "docker").mkdir()
    (folder / "docker" / "Dockerfile.real").write_bytes(DOCKERFILE)
    (folder / "docker" / "rules").write_text("*.log\n")
    (folder / "shared").symlink_to("docker")
    (folder / "Dockerfile").unlink()
    (folder / "Dockerfile").symlink_to("shared/../docker/Dockerfile.real")
    (folder / ".dockerignore").symlink_to(folder / "shared" / "rules")
    (folder / "debug.log").write_text("x\n")
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    assert ctx.dockerfile == hashlib.sha256(DOCKERFILE).hexdigest()
    assert ctx.ignore_file == ".dockerignore"
    assert "debug.log" not in {e.path for e in ctx.files}
    assert dockerfile_texts(Catalog(layers={"l": layer}, upstreams={}))["l"] == \
        DOCKERFILE.decode()
    _, dockerfile = make_snapshot(layer, ctx, tmp_path / "snap")
    assert dockerfile.read_bytes() == DOCKERFILE


def test_the_copy_never_writes_through_a_link_planted_in_the_snapshot_folder(
        folder: Path, tmp_path: Path) -> None:
    """The snapshot folder is private, but whatever could write there (a
    leftover, a bind mount an engine wrote through) must not redirect the copy:
    every folder of the copy is made here, and opened without following."""
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    dest = tmp_path / "snap"
    snapshot.new_folder(dest)
    (dest / "context" / "d1").symlink_to(outside)  # where the copy will make d1/
    with pytest.raises(FileExistsError):
        snapshot._fill(layer, ctx, str(dest), str(folder))
    assert list(outside.iterdir()) == []


def test_removing_a_snapshot_never_follows_a_link_out(tmp_path: Path) -> None:
    """A snapshot path that became a link, or a link inside a copy of a read-only
    folder (the slow path): the links go, what they point to stays as it was."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "keep.txt").write_text("mine\n")
    os.chmod(outside / "sub", 0o555)
    (tmp_path / "builds").mkdir()
    link = tmp_path / "builds" / "b1"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.exists() and not link.is_symlink()
    copy = tmp_path / "builds" / "b2"
    (copy / "ro").mkdir(parents=True)
    (copy / "ro" / "out").symlink_to(outside)
    (copy / "ro" / "f").write_text("x\n")
    os.chmod(copy / "ro", 0o555)
    remove_tree(copy)
    assert not copy.exists()
    assert stat.S_IMODE(os.stat(outside / "sub").st_mode) == 0o555
    assert (outside / "sub" / "keep.txt").read_text() == "mine\n"
    os.chmod(outside / "sub", 0o755)


def test_a_kept_folder_with_a_link_planted_in_its_copy_is_not_reused(
        folder: Path, tmp_path: Path) -> None:
    """Emptying removes what the copy made, by name, through the copy folder's
    descriptor: a link planted in it keeps the folder from reuse (it is
    removed, the link unlinked), and its target is untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine\n")
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    builds = tmp_path / "builds"
    snapshots = Snapshots(inline=True)

    async def main() -> None:
        async with snapshots.snapshot(layer, ctx, builds / "b1") as (root, _):
            (root / "planted").symlink_to(outside)
        assert list(builds.iterdir()) == []  # removed, not kept
        async with snapshots.snapshot(layer, ctx, builds / "b2") as (root, _):
            assert sorted(p.name for p in root.iterdir()) == ["Dockerfile", "d1"]
        snapshots.close()

    asyncio.run(main())
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "mine\n"


def test_a_hard_link_to_a_file_outside_is_content_of_the_context(
        folder: Path, tmp_path: Path) -> None:
    """A hard link is the file itself, wherever its other names are: the engine
    would send its content, so the key holds it and the snapshot copies it. (The
    kernel's fs.protected_hardlinks keeps a user from linking a file they could
    not read and write.)"""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared.txt").write_bytes(ORIGINAL + b"shared\n")
    os.link(outside / "shared.txt", folder / "shared.txt")
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    entry = {e.path: e for e in ctx.files}["shared.txt"]
    assert entry.digest == hashlib.sha256(ORIGINAL + b"shared\n").hexdigest()
    root, _ = make_snapshot(layer, ctx, tmp_path / "snap")
    assert (root / "shared.txt").read_bytes() == ORIGINAL + b"shared\n"
    assert os.stat(root / "shared.txt").st_nlink == 1  # a copy, not the inode


@pytest.mark.parametrize(("link", "target", "outcome"), [
    ("a", "docker/Dockerfile.real", "inside"),
    ("a", "shared/../docker/Dockerfile.real", "inside"),  # ".." by the text, as the key
    ("a", "{root}/docker/Dockerfile.real", "inside"),  # absolute, inside
    ("a", "b", "inside"),  # a chain: b -> docker/Dockerfile.real
    ("a", "../layer/docker/Dockerfile.real", "escapes"),  # out and back in: still out
    ("a", "{outside}/secret", "escapes"),
    ("a", "shared/../../outside/secret", "escapes"),
    ("a", "loop", "loop"),  # loop -> loop
    ("a", "missing", "missing"),
])
def test_open_beneath_follows_a_link_only_as_far_as_the_folder(
        tmp_path: Path, link: str, target: str, outcome: str) -> None:
    from orchestrator.catalog.beneath import FOLDER, Escapes, open_beneath

    root = tmp_path / "layer"
    (root / "docker").mkdir(parents=True)
    (root / "docker" / "Dockerfile.real").write_bytes(DOCKERFILE)
    (root / "shared").symlink_to("docker")
    (root / "b").symlink_to("docker/Dockerfile.real")
    (root / "loop").symlink_to("loop")
    outside = outside_for(tmp_path, 3)
    (root / link).symlink_to(target.format(root=root, outside=outside))
    open_before = len(os.listdir("/proc/self/fd"))
    top = os.open(root, FOLDER)
    try:
        if outcome == "inside":
            fd = open_beneath(top, link, root=str(root))
            with os.fdopen(fd, "rb") as opened:
                assert opened.read() == DOCKERFILE
        elif outcome == "escapes":
            with pytest.raises(Escapes):
                open_beneath(top, link, root=str(root))
        else:
            with pytest.raises(OSError) as raised:
                open_beneath(top, link, root=str(root))
            assert raised.value.errno == (errno.ELOOP if outcome == "loop" else errno.ENOENT)
    finally:
        os.close(top)
    assert len(os.listdir("/proc/self/fd")) == open_before  # nothing left open
