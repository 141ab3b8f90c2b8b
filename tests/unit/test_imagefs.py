"""Reading selected files out of layer tarballs: whiteouts, opaque dirs, links, limits."""

from __future__ import annotations

import gzip
import importlib.util
import io
import tarfile
from collections.abc import Iterator
from typing import IO, Any

import pytest

from orchestrator.registry.imagefs import (
    ImageFsError,
    SelectedFile,
    compile_patterns,
    contents,
    select_files,
)

DIR = object()


def layer(*entries: tuple[str, object], compress: str = "gzip", prefix: str = "") -> IO[bytes]:
    """A layer blob: (name, bytes) files, (name, DIR) dirs, (name, ("->", target)) symlinks,
    (name, ("=>", target)) hard links."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in entries:
            info = tarfile.TarInfo(prefix + name)
            if body is DIR:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(body, tuple):
                info.type = tarfile.SYMTYPE if body[0] == "->" else tarfile.LNKTYPE
                info.linkname = body[1]
                tar.addfile(info)
            else:
                assert isinstance(body, bytes)
                info.size, info.mode = len(body), 0o644
                tar.addfile(info, io.BytesIO(body))
    data = raw.getvalue()
    if compress == "gzip":
        data = gzip.compress(data, mtime=0)
    return io.BytesIO(data)


class OneWay(io.RawIOBase):
    """A stream that cannot seek or tell, like a registry blob response."""

    def __init__(self, blob: IO[bytes]) -> None:
        self.blob = blob

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self.blob.read(min(len(buffer), 777))  # odd sizes, to cross boundaries
        buffer[:len(chunk)] = chunk
        return len(chunk)


def read(*layers: IO[bytes], patterns: tuple[str, ...] = ("**",),
         max_file_size: int = 1 << 20, max_total_size: int = 1 << 22) -> dict[str, SelectedFile]:
    return select_files([io.BufferedReader(OneWay(b)) for b in layers], patterns,
                        max_file_size=max_file_size, max_total_size=max_total_size)


def test_later_layers_override_and_only_selected_bodies_are_kept() -> None:
    files = read(
        layer(("var", DIR), ("var/lib/dpkg/status", b"v1"), ("usr/bin/big", b"x" * 10_000)),
        layer(("var/lib/dpkg/status", b"v2"), compress="none"),
        patterns=("var/lib/dpkg/status",),
    )
    assert list(files) == ["var/lib/dpkg/status"]
    status = files["var/lib/dpkg/status"]
    assert (status.kind, status.data, status.size, status.layer) == ("file", b"v2", 2, 1)
    assert contents(files) == {"var/lib/dpkg/status": b"v2"}


def test_whiteout_deletes_a_lower_file_and_a_lower_directory() -> None:
    files = read(
        layer(("a/keep", b"1"), ("a/drop", b"2"), ("b/x/y", b"3"), ("b/z", b"4")),
        layer(("a/.wh.drop", b""), ("b/.wh.x", b"")),
    )
    assert contents(files) == {"a/keep": b"1", "b/z": b"4"}


def test_whiteout_does_not_touch_its_own_layer() -> None:
    # Spec: a whiteout hides lower layers only; the same layer may re-create the path.
    files = read(layer(("etc/conf", b"old")),
                 layer(("etc/.wh.conf", b""), ("etc/conf", b"new")))
    assert contents(files) == {"etc/conf": b"new"}
    files = read(layer(("etc/conf", b"old")),
                 layer(("etc/conf", b"new"), ("etc/.wh.conf", b"")))
    assert contents(files) == {"etc/conf": b"new"}


def test_opaque_directory_hides_lower_contents_but_keeps_its_own() -> None:
    files = read(
        layer(("site/a.dist-info/METADATA", b"a"), ("site/b.dist-info/METADATA", b"b"),
              ("other/file", b"o")),
        layer(("site", DIR), ("site/.wh..wh..opq", b""), ("site/c.dist-info/METADATA", b"c")),
    )
    assert contents(files) == {"other/file": b"o", "site/c.dist-info/METADATA": b"c"}


def test_a_whiteout_then_a_later_layer_brings_it_back() -> None:
    files = read(layer(("f", b"1")), layer((".wh.f", b"")), layer(("f", b"3")))
    assert files["f"].data == b"3"
    assert files["f"].layer == 2


def test_aufs_bookkeeping_names_are_not_deletions() -> None:
    files = read(layer(("plnk", b"1"), (".wh.plnk", DIR)),  # lower: same layer, kept
                 layer((".wh..wh.plnk", DIR), (".wh..wh.aufs", b"")))
    assert contents(files) == {"plnk": b"1"}


def test_replacing_a_directory_with_a_file_or_link_drops_its_contents() -> None:
    files = read(layer(("lib/python/x", b"1"), ("lib/other/y", b"2"), ("cfg", b"3")),
                 layer(("lib/python", ("->", "/usr/lib/python")), ("lib/other", b"file now"),
                       ("cfg", DIR)),
                 patterns=("lib/other/y", "lib/python/x", "cfg"))
    assert files == {}


def test_symlinks_and_hard_links() -> None:
    files = read(layer(
        ("v/3.13.5/bin/python3.13", b"\x7fELF"),
        ("v/3.13.5/bin/python3", ("->", "python3.13")),
        ("v/3.13.5/bin/python", ("=>", "v/3.13.5/bin/python3.13")),
        ("v/3.13.5/bin/pydoc", b"unselected"),
        ("v/3.13.5/bin/python-doc", ("=>", "v/3.13.5/bin/pydoc")),
    ), patterns=("v/*/bin/python*",))
    assert files["v/3.13.5/bin/python3"].kind == "symlink"
    assert files["v/3.13.5/bin/python3"].link_target == "python3.13"
    assert files["v/3.13.5/bin/python3"].data is None
    hard = files["v/3.13.5/bin/python"]
    assert (hard.kind, hard.data, hard.link_target) == \
        ("hardlink", b"\x7fELF", "v/3.13.5/bin/python3.13")
    assert files["v/3.13.5/bin/python-doc"].data is None  # its body was not kept


def test_presence_patterns_record_paths_without_bodies() -> None:
    files = select_files([layer(
        ("py/bin/python3.13", b"\x7fELF" * 5000), ("py/bin/python3", ("->", "python3.13")),
        ("py/bin/python", ("=>", "py/bin/python3.13")), ("py/METADATA", b"m"))],
        ["py/METADATA"], presence=["py/bin/python*"], max_file_size=100)
    assert contents(files) == {"py/METADATA": b"m", "py/bin/python": None,
                               "py/bin/python3": None, "py/bin/python3.13": None}
    binary = files["py/bin/python3.13"]
    assert (binary.kind, binary.size) == ("file", 20000)
    assert files["py/bin/python"].link_target == "py/bin/python3.13"


def test_member_names_are_normalised() -> None:
    files = read(layer(("./var/lib/x", b"1"), ("/etc//y", b"2"), ("../escape", b"3"), ("./", DIR)))
    assert contents(files) == {"etc/y": b"2", "var/lib/x": b"1"}


def test_whiteouts_with_dot_slash_names_apply() -> None:
    files = read(layer(("f/g", b"1"), prefix="./"), layer(("f/.wh.g", b""), prefix="./"))
    assert files == {}


def test_patterns_are_path_globs() -> None:
    match = compile_patterns([
        "var/lib/dpkg/status", "**/site-packages/*.dist-info/METADATA",
        "**/.pyenv/versions/*/bin/python*", "etc/[!x]ostname", lambda p: p.endswith(".special")])
    assert match("var/lib/dpkg/status")
    assert not match("var/lib/dpkg/status-old")
    assert match("site-packages/flask-3.1.0.dist-info/METADATA")  # ** is zero dirs too
    assert match("home/a/.pyenv/versions/3.13.5/lib/python3.13/site-packages/"
                 "Flask-3.1.0.dist-info/METADATA")
    assert not match("lib/site-packages/x/y.dist-info/METADATA")  # * stays in one segment
    assert match("home/alpine/.pyenv/versions/3.13.5/bin/python3.13")
    assert not match("home/alpine/.pyenv/versions/3.13.5/envs/x/bin/python")
    assert match("etc/hostname")
    assert not match("etc/xostname")
    assert match("deep/down/file.special")
    assert not compile_patterns([])("anything")


def test_unselected_bodies_are_not_limited_but_selected_ones_are() -> None:
    big = b"z" * 5000
    assert contents(read(layer(("huge", big), ("small", b"s")), patterns=("small",),
                         max_file_size=100)) == {"small": b"s"}
    with pytest.raises(ImageFsError, match="huge is 5000 bytes"):
        read(layer(("huge", big)), patterns=("huge",), max_file_size=100)
    with pytest.raises(ImageFsError, match="exceed 6000 bytes"):
        read(layer(("a", big), ("b", big)), patterns=("*",), max_total_size=6000)
    # A file replaced in the same layer counts once.
    assert read(layer(("a", big), ("a", big)), max_total_size=6000)["a"].data == big


def test_many_unselected_members_keep_no_per_member_state() -> None:
    entries = [(f"usr/share/doc/pkg{i}/copyright", b"c") for i in range(3000)]
    files = read(layer(*entries, ("var/lib/dpkg/status", b"s")),
                 patterns=("var/lib/dpkg/status",))
    assert contents(files) == {"var/lib/dpkg/status": b"s"}


def test_layers_may_be_opened_lazily() -> None:
    opened: list[int] = []

    def blobs() -> Iterator[IO[bytes]]:
        for index, blob in enumerate([layer(("f", b"1")), layer(("f", b"2"))]):
            opened.append(index)
            yield blob

    assert select_files(blobs(), ["f"])["f"].data == b"2"
    assert opened == [0, 1]


@pytest.mark.parametrize("blob", [b"", b"not a tar stream at all" * 40,
                                  gzip.compress(b"\x00garbage" * 100, mtime=0)[:-30]],
                         ids=["empty", "not-a-tar", "truncated-gzip"])
def test_unreadable_layers_raise_image_fs_errors(blob: bytes) -> None:
    with pytest.raises(ImageFsError, match="layer 1"):
        read(layer(("f", b"1")), io.BytesIO(blob))


def test_truncated_gzip_layer_is_an_error() -> None:
    whole = layer(("f", b"x" * 50_000), compress="gzip").read()
    with pytest.raises(ImageFsError, match="layer 0"):
        read(io.BytesIO(whole[: len(whole) // 2]), patterns=("f",))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # "compression" itself is missing before Python 3.14
        return False


def test_zstd_layers_need_a_decoder() -> None:
    plain = layer(("f", b"zst"), compress="none").read()
    if not _installed("zstandard") and not _installed("compression.zstd"):
        frame = b"\x28\xb5\x2f\xfd" + b"\x00" * 16
        with pytest.raises(ImageFsError, match="zstd-compressed"):
            read(io.BytesIO(frame))
        return
    zstandard: Any = importlib.import_module("zstandard")  # pragma: no cover - optional
    blob = zstandard.ZstdCompressor().compress(plain)  # pragma: no cover
    assert read(io.BytesIO(blob))["f"].data == b"zst"  # pragma: no cover


def test_each_blob_is_read_to_its_end() -> None:
    """So a reader that verifies the blob digest while streaming sees all of it."""
    padded = layer(("g", b"2"), compress="none").read() + b"\0" * 9000
    blobs = [layer(("f", b"1")), io.BytesIO(padded)]
    select_files(blobs, ["f"])
    assert all(blob.read() == b"" for blob in blobs)
