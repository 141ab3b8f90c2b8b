"""What the build key sees of a context: every edit that changes the image changes
the key (mtime-restoring edits, modes, directories), and bad files are clear errors."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from orchestrator.build.snapshot import ContextChanged, make_snapshot
from orchestrator.catalog import context
from orchestrator.core.buildkey import build_key
from orchestrator.core.errors import InputError
from orchestrator.core.model import Inputs, Layer


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
    real_open = Path.open

    def deny(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "secret.key":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    (folder / "secret.key").write_text("x")
    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(InputError, match=r"secret\.key: cannot read: Permission denied"):
        key_of(folder)
    errors = context.read_contexts([layer_at(folder)])
    assert isinstance(errors["l"], InputError)  # that layer's error, not the run's


def test_a_file_deleted_during_the_scan_is_simply_not_there(folder: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    (folder / "4913").write_text("")  # vim's probe file, gone a moment later
    real_lstat = Path.lstat

    def vanish(self: Path) -> os.stat_result:
        if self.name == "4913":
            raise FileNotFoundError(2, "No such file", str(self))
        return real_lstat(self)

    monkeypatch.setattr(Path, "lstat", vanish)
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
