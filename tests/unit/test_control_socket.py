"""Binding the control socket: a stale socket is replaced, anything else at the
path (a mistyped ``[control] socket`` naming a file) is left alone."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.core.errors import InputError
from orchestrator.service.api import ControlServer
from orchestrator.service.ports import Refused


def server(path: Path) -> ControlServer:
    daemon: Any = SimpleNamespace(config=SimpleNamespace(
        control_socket=path, daemon=SimpleNamespace(socket_group=None)))
    return ControlServer(daemon)


def test_a_regular_file_at_the_socket_path_is_never_removed(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    with pytest.raises(InputError, match=r"\[control\] socket.*notes.txt exists and is not "
                                         r"a socket"):
        server(notes)._bind(notes)
    assert notes.read_text() == "keep me\n"


def test_a_symlink_or_folder_at_the_socket_path_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("data")
    link = tmp_path / "link.sock"
    link.symlink_to(target)
    with pytest.raises(InputError, match="is not a socket"):
        server(link)._bind(link)
    assert link.is_symlink() and target.read_text() == "data"
    dangling = tmp_path / "dangling.sock"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="is not a socket"):
        server(dangling)._bind(dangling)
    assert dangling.is_symlink()
    folder = tmp_path / "folder.sock"
    folder.mkdir()
    with pytest.raises(InputError, match="is not a socket"):
        server(folder)._bind(folder)
    assert folder.is_dir()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a daemon that died
    sock = server(path)._bind(path)
    try:
        assert path.stat().st_mode & 0o777 == 0o660
        with pytest.raises(Refused, match="another daemon is listening"):
            server(path)._bind(path)
    finally:
        sock.close()
