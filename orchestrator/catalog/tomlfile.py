"""Reading user TOML files with errors that name the file, line and field."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.catalog.beneath import Escapes, open_inside
from orchestrator.core.durations import parse_duration, parse_size
from orchestrator.core.errors import InputError

T = TypeVar("T")

_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def display(path: str | os.PathLike[str]) -> str:
    """A path as the user is likely to recognise it: relative to cwd when under it.
    String work only (no symlink resolution): it runs for every layer loaded."""
    cwd = os.getcwd()
    absolute = os.path.abspath(path)
    if absolute.startswith(cwd + os.sep):
        return absolute[len(cwd) + 1:]
    return os.fspath(path)


def is_folder(entry: os.DirEntry[str]) -> bool:
    """As Path.is_dir for a listed entry (a link to a folder is one): a link loop
    or an entry gone since the listing is not a folder, not an error."""
    try:
        return entry.is_dir()
    except OSError:
        return False


# Dockerfiles, ignore files and TOML are small; a bigger one is a mistake (or a
# link to /dev/zero) that must not fill the daemon's memory.
TEXT_LIMIT = 4 << 20


def open_regular(path: str | os.PathLike[str],
                 beneath: str | os.PathLike[str] | None = None) -> int:
    """A read-only descriptor of a regular file (following a symlink). Raises
    FileNotFoundError when it is missing, InputError naming the file when it is
    anything else: a fifo would block its reader for good, a device never ends.
    ``beneath``: a folder ``path`` lies in (a build context) that the open must
    not leave, whatever links stand on the way (see catalog/beneath.py)."""
    return _open_regular(path, beneath)[0]


def _open_regular(path: str | os.PathLike[str],
                  beneath: str | os.PathLike[str] | None = None,
                  ) -> tuple[int, os.stat_result]:
    """open_regular, and the descriptor's stat."""
    try:
        if beneath is None:
            # O_NONBLOCK: opening a fifo must not wait for a writer.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            fd = open_inside(os.fspath(beneath), os.fspath(path))
    except FileNotFoundError:
        raise
    except Escapes as exc:
        raise link_out_of(path, beneath or ".", exc.target) from None
    except OSError as exc:
        raise InputError(display(path), f"cannot read: {exc.strerror}") from exc
    try:
        info: os.stat_result | None = os.fstat(fd)
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(display(path), "not a regular file (a fifo, device or socket): "
                         "make it an ordinary file")
    return fd, info


def link_out_of(path: str | os.PathLike[str], folder: str | os.PathLike[str],
                target: str) -> InputError:
    """A file of a build context reached through a link out of it."""
    return InputError(display(path), f"a link out of {display(folder)} (-> {target}): "
                      "the daemon reads nothing outside a build context for it; copy the "
                      "file in, or name its real path in layer.toml")


# What read_text_file tells a caller that wants the bytes too: the descriptor's
# stat before and after the read, and the bytes read.
Seen = Callable[[os.stat_result, os.stat_result, bytes], None]


def read_text_file(path: Path, *, encoding: str = "utf-8", limit: int = TEXT_LIMIT,
                   seen: Seen | None = None, beneath: Path | None = None) -> str:
    """A user-written text file of at most ``limit`` bytes, opened with
    open_regular (FileNotFoundError when missing, InputError for anything else).
    ``seen`` is given the bytes as read (see Seen); ``beneath`` as open_regular."""
    fd, before = _open_regular(path, beneath)
    try:
        data = b""
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
        if seen is not None and len(data) <= limit:
            seen(before, os.fstat(fd), data)
    except OSError as exc:
        raise InputError(display(path), f"cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(display(path), f"larger than {limit >> 20} MiB: is it the right file?")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(display(path), f"cannot read: not {encoding} text ({exc.reason} at "
                         f"byte {exc.start})") from exc


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = read_text_file(path)
    except FileNotFoundError:
        raise InputError(display(path), "file not found") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _AT_LINE.search(message)
        where = display(path)
        if match:
            where = f"{where}:{match.group(1)}"
            message = _AT_LINE.sub("", message)
        raise InputError(where, f"invalid TOML: {message}") from exc


class Table:
    """Typed, checked access to one TOML table; every error names its field."""

    def __init__(self, data: dict[str, Any], where: str, prefix: str = "") -> None:
        self.data = data
        self.where = where
        self.prefix = prefix

    def field(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, problem: str) -> InputError:
        return InputError(self.where, f"{self.field(key)}: {problem}")

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in self.data:
            if key not in allowed:
                raise self.error(key, f"unknown key (expected one of: {', '.join(allowed)})")

    def get(self, key: str, kind: type[T], default: T) -> T:
        if key not in self.data:
            return default
        return self.require(key, kind)

    def require(self, key: str, kind: type[T]) -> T:
        if key not in self.data:
            raise self.error(key, "missing")
        value = self.data[key]
        # bool is an int in Python; a TOML `jobs = true` is still a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def optional_str(self, key: str) -> str | None:
        return self.require(key, str) if key in self.data else None

    def string_list(self, key: str) -> list[str]:
        value = self.get(key, list, [])
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return list(value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.get(key, dict, {})
        out: dict[str, str] = {}
        for name, item in value.items():
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self.error(f"{key}.{name}", "expected a string")
            out[name] = str(item)
        return out

    def table(self, key: str) -> Table:
        return Table(self.get(key, dict, {}), self.where, f"{self.prefix}{key}.")

    def duration(self, key: str, default: float | None,
                 minimum: float | None = None) -> float | None:
        """Seconds. ``minimum``: the smallest value that makes sense (a zero poll is
        a hot loop against a registry; a zero timeout fails every build)."""
        if key not in self.data:
            return default
        raw = self.data[key]
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            seconds = float(raw)
        elif isinstance(raw, str):
            try:
                seconds = parse_duration(raw)
            except ValueError as exc:
                raise self.error(key, str(exc)) from None
        else:
            raise self.error(key, "expected a duration such as \"15m\"")
        if seconds < 0 or (minimum is not None and seconds < minimum):
            least = f"{minimum:g}s" if minimum is not None else "0s"
            raise self.error(key, f"{raw!r} is too short: use at least {least}")
        return seconds

    def size(self, key: str, default: int) -> int:
        """Bytes, from 64M / "512K" / an integer."""
        if key not in self.data:
            return default
        raw = self.data[key]
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str):
            try:
                value = parse_size(raw)
            except ValueError as exc:
                raise self.error(key, str(exc)) from None
        else:
            raise self.error(key, "expected a size such as \"64M\"")
        if value < 0:
            raise self.error(key, "must not be negative")
        return value
