"""What the build key sees of a context: every edit that changes the image changes
the key (mtime-restoring edits, modes, directories), and bad files are clear errors."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.snapshot import ContextChanged, make_snapshot
from orchestrator.catalog import context, digests
from orchestrator.catalog.layers import dockerfile_texts
from orchestrator.catalog.tomlfile import TEXT_LIMIT
from orchestrator.core.buildkey import build_key
from orchestrator.core.errors import InputError
from orchestrator.core.model import Catalog, Inputs, Layer


def layer_at(folder: Path) -> Layer:
    return Layer(id="l", name="l", folder=folder, dockerfile=folder / "Dockerfile",
                 image="l", parent=None, upstream="seed")


def key_of(folder: Path) -> str:
    ctx = context.read_context(layer_at(folder))
    return build_key(Inputs(ctx.dockerfile, ctx.files, (), "sha256:parent"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "layer"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY . /app\n")
    (folder / "app.py").write_text("print('one')\n")
    os.chmod(folder / "app.py", 0o600)
    return folder


def restore_mtime(path: Path, like: os.stat_result) -> None:
    os.utime(path, ns=(like.st_atime_ns, like.st_mtime_ns))


def test_a_same_size_rewrite_with_the_mtime_put_back_changes_the_key(folder: Path) -> None:
    before = key_of(folder)
    info = (folder / "app.py").stat()
    (folder / "app.py").write_text("print('two')\n")  # same size
    restore_mtime(folder / "app.py", info)  # as within one timestamp tick
    assert (folder / "app.py").stat().st_mtime_ns == info.st_mtime_ns
    assert key_of(folder) != before


def test_cp_p_touch_r_and_tar_x_cannot_hide_an_edit(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.py"
    other.write_text("print('six')\n")
    info = (folder / "app.py").stat()
    os.utime(other, ns=(info.st_atime_ns, info.st_mtime_ns))
    before = key_of(folder)
    # cp -p: new content, the old file's mtime
    subprocess.run(["cp", "-p", str(other), str(folder / "app.py")], check=True)
    after_cp = key_of(folder)
    assert after_cp != before
    # touch -r: mtime copied from another file
    (folder / "app.py").write_text("print('sev')\n")
    subprocess.run(["touch", "-r", str(other), str(folder / "app.py")], check=True)
    after_touch = key_of(folder)
    assert after_touch != after_cp
    # tar x: a member extracted with its archived mtime
    archive = tmp_path / "a.tar"
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.py").write_text("print('eig')\n")
    os.utime(src / "app.py", ns=(info.st_atime_ns, info.st_mtime_ns))
    with tarfile.open(archive, "w") as tar:
        tar.add(src / "app.py", arcname="app.py")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(folder)], check=True)
    assert key_of(folder) != after_touch
    if shutil.which("rsync"):  # rsync -t: content and times from elsewhere
        (other).write_text("print('nin')\n")
        subprocess.run(["rsync", "-t", str(other), str(folder / "app.py")], check=True)
        assert key_of(folder) != after_touch


def test_modes_and_directories_are_inputs(folder: Path) -> None:
    keys = {key_of(folder)}
    os.chmod(folder / "app.py", 0o644)
    keys.add(key_of(folder))
    os.chmod(folder / "app.py", 0o4755)  # setuid
    keys.add(key_of(folder))
    (folder / "empty").mkdir()
    keys.add(key_of(folder))
    os.chmod(folder / "empty", 0o700)
    keys.add(key_of(folder))
    assert len(keys) == 5


def test_an_unreadable_file_is_a_clear_error_naming_it(folder: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads a mode-000 file anyway: stand in for what a non-root daemon meets.
    class DenyingOS:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def open(self, path: Any, *args: Any, **kwargs: Any) -> int:
            if str(path).endswith("secret.key"):
                raise PermissionError(13, "Permission denied", str(path))
            return os.open(path, *args, **kwargs)

    (folder / "secret.key").write_text("x")
    monkeypatch.setattr(digests, "os", DenyingOS())  # where context files are opened
    with pytest.raises(InputError, match=r"secret\.key: cannot read: Permission denied"):
        key_of(folder)
    errors = context.read_contexts([layer_at(folder)])
    assert isinstance(errors["l"], InputError)  # that layer's error, not the run's


def test_a_file_deleted_during_the_scan_is_simply_not_there(folder: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    (folder / "4913").write_text("")  # vim's probe file, gone a moment later
    real_listing = context._listing

    def listing(path: str) -> Any:
        found = real_listing(path)
        (folder / "4913").unlink(missing_ok=True)  # listed, then gone before its lstat
        return found

    monkeypatch.setattr(context, "_listing", listing)
    files = {e.path for e in context.read_context(layer_at(folder)).files}
    assert "4913" not in files and "app.py" in files


def test_a_symlink_out_of_the_tree_is_refused(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("x")
    (folder / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(InputError, match="symlink escapes the build context"):
        key_of(folder)


def test_the_snapshot_is_exactly_the_hashed_set(folder: Path, tmp_path: Path) -> None:
    (folder / ".dockerignore").write_text("*.log\n")
    (folder / "debug.log").write_text("noise")
    (folder / "empty").mkdir()
    (folder / "sub").mkdir()
    (folder / "sub" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(folder / "sub" / "run.sh", 0o4750)
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    root, dockerfile = make_snapshot(layer, ctx, tmp_path / "snap")
    copied = sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "")
                    for p in root.rglob("*"))
    assert copied == sorted(e.path for e in ctx.files)
    assert "debug.log" not in copied and "empty/" in copied
    assert stat.S_IMODE((root / "sub" / "run.sh").stat().st_mode) == 0o4750
    assert dockerfile.read_text() == (folder / "Dockerfile").read_text()


def test_an_edit_after_hashing_never_reaches_the_engine(folder: Path, tmp_path: Path) -> None:
    layer = layer_at(folder)
    ctx = context.read_context(layer)
    (folder / "app.py").write_text("print('edited while the parent built')\n")
    with pytest.raises(ContextChanged, match=r"app\.py changed"):
        make_snapshot(layer, ctx, tmp_path / "snap")


def _within(seconds: float, fn: Callable[[], object]) -> BaseException | None:
    """Run ``fn`` in a thread; it must end within ``seconds``. Returns what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the reader blocked"
    return raised[0] if raised else None


@pytest.mark.parametrize("kind", ["fifo", "device", "link to a device"])
def test_a_dockerfile_that_is_not_a_file_is_an_error_not_a_hang(folder: Path, kind: str) -> None:
    layer = layer_at(folder)
    (folder / "Dockerfile").unlink()
    if kind == "fifo":
        os.mkfifo(folder / "Dockerfile")  # no writer: a blocking open would wait for good
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node takes root")
        os.mknod(folder / "Dockerfile", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero
    else:
        (folder / "Dockerfile").symlink_to("/dev/zero")  # never ends, and out of the context
    catalog = Catalog(layers={"l": layer}, upstreams={})
    expected = "a link out of" if kind.startswith("link") else "not a regular file"
    for reader in (lambda: context.read_context(layer), lambda: dockerfile_texts(catalog)):
        error = _within(5, reader)
        assert isinstance(error, InputError) and expected in str(error), error


def test_an_oversized_dockerfile_is_refused(folder: Path) -> None:
    with open(folder / "Dockerfile", "ab") as out:
        out.truncate(TEXT_LIMIT + 1)
    catalog = Catalog(layers={"l": layer_at(folder)}, upstreams={})
    with pytest.raises(InputError, match="larger than"):
        dockerfile_texts(catalog)


def test_files_and_folders_that_vanish_during_the_scan_are_not_errors(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "tmpdir").mkdir()
    (folder / "tmpdir" / "f").write_text("x")
    (folder / "link").symlink_to("app.py")
    real_listing, real_readlink = context._listing, os.readlink

    def listing(fd: int) -> Any:
        found = real_listing(fd)
        if any(e.name == "tmpdir" for e in found[0]):
            shutil.rmtree(folder / "tmpdir")  # a tool removes its temp folder mid-scan
        return found

    def readlink(path: Any, **kwargs: Any) -> str:
        os.unlink(path, **kwargs)  # the link goes between lstat and readlink
        return real_readlink(path, **kwargs)

    monkeypatch.setattr(context, "_listing", listing)
    monkeypatch.setattr(context.os, "readlink", readlink)
    ctx = context.read_contexts([layer_at(folder)])["l"]
    assert not isinstance(ctx, InputError), ctx
    # What was gone when looked at is not sent; what went after it was read is
    # found missing by the build's snapshot, which reads the layer again.
    paths = {e.path for e in ctx.files}
    assert "link" not in paths and "tmpdir/" not in paths and "app.py" in paths


def test_any_other_filesystem_error_is_the_layers_input_error(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def scan(*args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error", str(folder / "app.py"))

    monkeypatch.setattr(context, "scan", scan)
    ctx = context.read_contexts([layer_at(folder)])["l"]
    assert isinstance(ctx, InputError) and "app.py" in str(ctx) and "Input/output" in str(ctx)


def test_shared_parents_resolve_as_realpath_does(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "layers" / "a").mkdir(parents=True)
    (real / "elsewhere").mkdir()
    (tmp_path / "deploy").symlink_to(real)  # the catalog behind an atomic-deploy link
    (real / "layers" / "b").symlink_to("../elsewhere")
    (real / "layers" / "c").symlink_to(real / "layers" / "a")
    resolve = context.SharedParents()
    for name in ("a", "b", "c", "missing", ".", ".."):
        for base in (real / "layers", tmp_path / "deploy" / "layers"):
            folder = Path(os.path.join(base, name))
            assert resolve(folder) == os.path.realpath(folder), folder


@pytest.mark.parametrize("kind", ["file", "link", "dangling", "folder", "link-to-folder"])
def test_the_ignore_file_found_from_the_listing_is_the_one_a_stat_finds(
        folder: Path, kind: str) -> None:
    """read_context looks ignore files up in the context's one listing: a link
    to a file counts (as os.path.isfile says), a dangling one or a folder does
    not, and the daemon's stat probe agrees."""
    (folder / "Dockerfile.dockerignore").unlink(missing_ok=True)
    (folder / "rules").write_text("*.log\n")
    (folder / "a.log").write_text("x\n")
    (folder / "sub").mkdir(exist_ok=True)
    target = folder / ".dockerignore"
    {"file": lambda: target.write_text("*.log\n"),
     "link": lambda: target.symlink_to("rules"),
     "dangling": lambda: target.symlink_to("missing"),
     "folder": lambda: target.mkdir(),
     "link-to-folder": lambda: target.symlink_to("sub")}[kind]()
    layer = layer_at(folder)
    found = context.read_context(layer, ("buildah", "docker"))
    expected = ".dockerignore" if kind in ("file", "link") else None
    assert found.ignore_file == expected == context.ignore_file(layer, ("buildah", "docker"))
    assert any(e.path == "a.log" for e in found.files) is (expected is None)


def test_the_dockerfile_read_by_the_load_is_not_read_again_for_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the catalog reads each Dockerfile; its digest is kept with the
    file's stat, so keying the layer does not read it again, and an edit made
    after the load (a new stat) is read and keyed."""
    from orchestrator.catalog.layers import load_catalog
    from orchestrator.core.model import UpstreamSpec

    layers = tmp_path / "layers"
    (layers / "app").mkdir(parents=True)
    (layers / "app" / "layer.toml").write_text('from = "upstream:seed"\n')
    dockerfile = layers / "app" / "Dockerfile"
    dockerfile.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    seed = UpstreamSpec("seed", "registry", image="r/seed", tag="1")
    catalog = load_catalog(layers, {"seed": seed})
    layer = catalog.layers["app"]
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **kw: (  # type: ignore[misc]
        opened.append(os.path.basename(path)), real_open(path, *a, **kw))[1])
    assert context.read_context(layer).dockerfile == \
        hashlib.sha256(dockerfile.read_bytes()).hexdigest()
    assert "Dockerfile" not in opened
    dockerfile.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN true\n")
    assert context.read_context(layer).dockerfile == \
        hashlib.sha256(dockerfile.read_bytes()).hexdigest()
    assert "Dockerfile" in opened


def test_bytes_read_while_the_file_changed_are_not_remembered(tmp_path: Path) -> None:
    from orchestrator.catalog import digests

    path = tmp_path / "Dockerfile"
    path.write_text("FROM a\n")
    before = os.stat(path)
    # Another size: the stamp moves even where the clock is coarse (a same-size
    # rewrite within one tick is the limit every stamp has).
    path.write_text("FROM bb\n")
    digests.remember(str(path), before, os.stat(path), b"FROM a\n")
    assert digests.file_digest(path) == hashlib.sha256(b"FROM bb\n").hexdigest()
