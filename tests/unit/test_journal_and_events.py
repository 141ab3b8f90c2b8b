"""Under systemd every log line carries its level's journal priority; the
event stream stamps its records in the log lines' ISO-8601 form."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import structlog

from orchestrator.service import logs
from orchestrator.service.events import EventBus


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def _journal_stream(path: Path) -> str:
    found = os.stat(path)
    return f"{found.st_dev}:{found.st_ino}"


def test_each_line_carries_its_priority_when_stdout_is_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "stdout"
    with out.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_stream(out))
        logs.configure(stream)
        log = structlog.get_logger("t")
        log.error("build_failed", layer="app")
        log.warning("upstream_unreachable")
        log.info("build_started")
        logging.getLogger("aiohttp.server").error("library trouble")
    lines = out.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<3>"]
    first = json.loads(lines[0][3:])
    assert first["event"] == "build_failed" and first["level"] == "error"
    assert json.loads(lines[3][3:])["event"] == "library trouble"


def test_no_prefix_when_stdout_is_not_the_journal_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JOURNAL_STREAM inherited by a process whose stdout went elsewhere (a file,
    a pipe): the lines stay plain JSON."""
    journal, out = tmp_path / "journal", tmp_path / "stdout"
    journal.write_text("")
    with out.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_stream(journal))
        logs.configure(stream)
        structlog.get_logger("t").error("build_failed")
    assert json.loads(out.read_text())["level"] == "error"
    monkeypatch.delenv("JOURNAL_STREAM")
    with out.open() as stream:
        assert not logs.writes_to_journal(stream)


async def test_event_records_are_stamped_like_the_log_lines() -> None:
    bus = EventBus()
    async with bus.subscribe() as queue:
        bus.publish("build_started", {"layer": "app"})
        record = queue.get_nowait()
    assert record is not None
    stamp = record["timestamp"]
    assert isinstance(stamp, str) and stamp.endswith("Z"), stamp
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None


def test_a_stream_with_no_file_behind_it_is_no_journal() -> None:
    """run --once's live view hands the logger a writer with no fileno()."""
    class Writer:
        def write(self, text: str) -> int:
            return len(text)

    assert not logs.writes_to_journal(Writer(), {"JOURNAL_STREAM": "8:12345"})  # type: ignore[arg-type]
