"""State store, log pruning, upstream polling policy, the file-watch filter, log redaction."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from orchestrator.build.logfiles import prune_logs
from orchestrator.build.state import AsyncStateStore, LayerRecord, StateStore
from orchestrator.build.state.db import COMMIT_DELAY_S
from orchestrator.core.errors import UpstreamError
from orchestrator.core.model import Inputs, ResolvedUpstream, UpstreamSpec
from orchestrator.registry.upstream import Backoff, UpstreamPoller, jittered
from orchestrator.service import logs
from orchestrator.service.watch import LayerFilter


def test_queue_coalesces_and_survives_a_crash(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "s.db")
    assert state.work.add("a", force=False, cause="one", request_id="r1") == "r1"
    assert state.work.add("a", force=True, cause="two", request_id="r2") == "r1"  # merged
    taken = state.work.take()
    assert [(t["layer"], t["force"]) for t in taken] == [("a", 1)]
    # A change while "a" is being built: exactly one follow-up, later ones merge in.
    assert state.work.add("a", force=False, cause="three", request_id="r3") == "r3"
    assert state.work.add("a", force=False, cause="four", request_id="r4") == "r3"
    state.close()
    again = StateStore(tmp_path / "s.db")  # as after kill -9: the taken entry is back
    assert again.work.requeue_taken() == 1
    assert [(q["layer"], q["force"], q["cause"]) for q in again.work.entries()] == \
        [("a", 1, "three")]


def test_interrupted_builds_are_never_successful(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "s.db")
    state.history.start("b1", "a", "k", "forced", None)
    state.close()
    again = StateStore(tmp_path / "s.db")
    assert [b["id"] for b in again.history.mark_interrupted()] == ["b1"]
    assert again.history.get("b1")["outcome"] == "interrupted"  # type: ignore[index]


def _record(layer: str, key: str) -> LayerRecord:
    inputs = Inputs(dockerfile="d" * 64, files=(), args=(), parent_digest="sha256:" + "0" * 64)
    return LayerRecord(layer, key, "sha256:" + "1" * 64, f"r/{layer}@sha256:" + "1" * 64,
                       inputs, 1.0)


def _seen(path: Path) -> tuple[dict[str, str], set[str]]:
    """What another process sees: each build's outcome, the layers recorded."""
    other = StateStore(path)
    try:
        return ({b["id"]: b["outcome"] for b in other.history.builds(limit=100)},
                set(other.records.all()))
    finally:
        other.close()


def _one_deferred(tmp_path: Path) -> tuple[Path, StateStore]:
    """A store whose build b1 (layer a) has finished, its commit deferred."""
    path = tmp_path / "s.db"
    state = StateStore(path)
    state.start_keyed_build("b1", "a", "k1", "new", None, 1.0)
    state.finish_built("b1", _record("a", "k1"), defer=True)
    return path, state


def test_a_deferred_finish_is_committed_by_the_next_transaction(tmp_path: Path) -> None:
    path, state = _one_deferred(tmp_path)
    assert _seen(path) == ({"b1": "running"}, set())  # not committed yet
    state.start_keyed_build("b2", "b", "k2", "new", None, 2.0)  # one commit: both
    assert _seen(path) == ({"b1": "built", "b2": "running"}, {"a"})
    # A lone statement (a trigger's request) is durable when its call returns,
    # and so is the deferred finish before it.
    state.finish_built("b2", _record("b", "k2"), defer=True)
    state.work.add_request("r1", ["a"], force=False, cause="test")
    assert _seen(path) == ({"b1": "built", "b2": "built"}, {"a", "b"})
    state.close()


def test_a_failed_transaction_keeps_the_deferred_one(tmp_path: Path) -> None:
    path, state = _one_deferred(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):  # the same build id twice
        state.start_keyed_build("b1", "b", "k2", "new", None, 2.0)
    assert _seen(path) == ({"b1": "built"}, {"a"})
    known = state.records.keys()
    assert "k2" not in known  # its own writes are undone
    state.start_keyed_build("b3", "b", "k3", "new", None, 3.0)  # and the store goes on
    assert _seen(path)[0] == {"b1": "built", "b3": "running"}
    state.finish_built("b3", _record("b", "k3"), defer=True)
    state.close()  # commits what was deferred
    assert _seen(path) == ({"b1": "built", "b3": "built"}, {"a", "b"})


class _FailingCommits:
    """The store's connection, with its next COMMITs failing as on a full disk
    (rolled back, as SQLite does)."""

    def __init__(self, conn: sqlite3.Connection, failures: int) -> None:
        self.conn, self.failures = conn, failures

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.failures:
            self.failures -= 1
            self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_deferred_finishes_a_failed_commit_lost_are_written_again(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    state = StateStore(path)
    state.history.start("b1", "a", "k1", "new", None)
    state.db._conn = _FailingCommits(state.db._conn, 2)  # type: ignore[assignment]
    state.finish_built("b1", _record("a", "k1"), defer=True)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        state.commit_deferred()  # the commit and the one retry both fail
    assert state.unsettled == ["a"] and _seen(path) == ({"b1": "running"}, set())
    # The next statement writes the finish again, then does its own work.
    state.work.add_request("r1", ["a"], force=False, cause="test")
    assert state.unsettled == [] and _seen(path) == ({"b1": "built"}, {"a"})
    state.close()


def test_reads_go_on_while_a_full_disk_refuses_a_deferred_finish(tmp_path: Path) -> None:
    """The disk fills as a build finishes: its deferred finish cannot be committed.
    Reads (status, the queue, the webhooks' next delivery) must still answer: a
    read commits nothing, so it has nothing to fail on."""
    path, state = _one_deferred(tmp_path)
    state.work.add_request("r0", ["a"], force=False, cause="before")
    state.finish_built("b1", _record("a", "k1"), defer=True)
    state.db._conn = _FailingCommits(state.db._conn, 1000)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        state.commit_deferred()
    assert state.unsettled == ["a"]
    assert state.history.get("b1") is not None
    assert [b["id"] for b in state.history.builds()] == ["b1"]
    assert state.work.entries() == [] and state.work.get_request("r0") is not None
    assert set(state.records.all()) == {"a"} and state.upstreams.get("seed") is None
    assert state.outbox.next("ops") == (None, 0)
    assert set(state.history.durations(["a"])) == {"a"}
    with pytest.raises(sqlite3.OperationalError, match="full"):
        state.probe()  # a write still tries the deferred finish first, and fails
    state.db._conn = state.db._conn.conn  # type: ignore[attr-defined]  # space is back
    state.probe()
    assert state.unsettled == [] and _seen(path) == ({"b1": "built"}, {"a"})
    state.close()


def test_a_transaction_sqlite_rolls_back_whole_keeps_its_own_error(tmp_path: Path) -> None:
    """A full disk inside a transaction that joined a deferred finish: the
    caller sees the real error, and the finish is written again once there is
    room."""
    path, state = _one_deferred(tmp_path)
    pages = state.db._conn.execute("PRAGMA page_count").fetchone()[0]
    state.db._conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for n in range(1000):
            state.start_keyed_build(f"b{n + 2}", "b", f"k{n + 2}" + "x" * 4000, "new", None, 2.0)
    state.db._conn.execute("PRAGMA max_page_count=1073741823")
    state.commit_deferred()
    outcomes, layers = _seen(path)
    assert outcomes["b1"] == "built" and layers == {"a"}
    state.close()


def test_a_crash_before_the_deferred_commit_reads_as_interrupted(tmp_path: Path) -> None:
    """kill -9 between a build's finish and its commit: the build is interrupted
    (never successful) and the layer unrecorded, so the next run looks its key
    up in the registry, as after a crash during the build."""
    path = tmp_path / "s.db"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "sys.path[:0] = [sys.argv[2]]\n"
        "from test_state_and_watch import _record\n"
        "from orchestrator.build.state import StateStore\n"
        "s = StateStore(Path(sys.argv[1]))\n"
        "s.start_keyed_build('b1', 'a', 'k1', 'new', None, 1.0)\n"
        "s.finish_built('b1', _record('a', 'k1'), defer=True)\n"
        "os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", script, str(path), str(Path(__file__).parent)],
                          check=False)
    assert done.returncode == -9
    again = StateStore(path)
    assert [b["id"] for b in again.history.mark_interrupted()] == ["b1"]
    assert again.records.get("a") is None
    again.close()


@pytest.mark.parametrize("inline", [True, False])
async def test_the_async_store_commits_a_deferred_finish_soon(tmp_path: Path,
                                                              inline: bool) -> None:
    path = tmp_path / "s.db"
    state = AsyncStateStore(StateStore(path), inline=inline)
    await state.start_keyed_build("b1", "a", "k1", "new", None, 1.0)
    await state.finish_built("b1", _record("a", "k1"))
    deadline = time.monotonic() + 5
    while _seen(path)[1] != {"a"}:
        assert time.monotonic() < deadline, "the deferred finish was never committed"
        await asyncio.sleep(COMMIT_DELAY_S / 5)
    await state.finish_built("b1", _record("a", "k1"))
    await state.close()  # before its timer: close commits it
    assert _seen(path) == ({"b1": "built"}, {"a"})


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"garbage" * 1000)
    state = StateStore(tmp_path / "s.db")
    assert state.moved_aside is not None and state.moved_aside.exists()
    assert state.work.entries() == []


def test_prune_logs_keeps_recent_and_running(tmp_path: Path) -> None:
    for name in ("old", "running", "new"):
        (tmp_path / f"{name}.log").write_text("x")
    old = time.time() - 100
    os.utime(tmp_path / "old.log", (old, old))
    os.utime(tmp_path / "running.log", (old, old))
    assert prune_logs(tmp_path, time.time() - 50, {"running"}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.log", "running.log"]


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=5, cap_s=60)
    assert [backoff.failure() for _ in range(6)] == [5, 10, 20, 40, 60, 60]
    backoff.success()
    assert backoff.failure(retry_after_s=30) == 30
    assert backoff.failure(retry_after_s=3600) == 60  # never beyond the cap


def test_jitter_spreads_within_ten_percent() -> None:
    rng = random.Random(1)
    values = [jittered(100, rng) for _ in range(200)]
    assert all(90 <= v <= 110 for v in values) and len({round(v) for v in values}) > 5


async def test_poller_reports_values_and_backs_off_on_errors() -> None:
    spec = UpstreamSpec("alpine", "registry", image="r/alpine", tag="3", poll_s=600)
    answers: list[object] = [UpstreamError("alpine", "HTTP 429", retry_after_s=42),
                             ResolvedUpstream("alpine", "r/alpine@sha256:1", "sha256:1", "3")]
    seen: list[str] = []
    errors: list[float] = []

    async def resolver(s: UpstreamSpec) -> ResolvedUpstream:
        answer = answers.pop(0)
        if isinstance(answer, UpstreamError):
            raise answer
        assert isinstance(answer, ResolvedUpstream)
        return answer

    async def on_value(value: ResolvedUpstream) -> None:
        seen.append(value.digest)

    poller = UpstreamPoller(spec, resolver, on_value, lambda exc, delay: errors.append(delay),
                            rng=random.Random(0))
    assert await poller.check() == 42  # Retry-After wins over a 5 s first backoff
    assert errors == [42] and poller.last_error is not None
    delay = await poller.check()
    assert seen == ["sha256:1"] and 540 <= delay <= 660 and poller.last_error is None


def test_watch_filter(tmp_path: Path) -> None:
    layer = tmp_path / "layers" / "app"
    layer.mkdir(parents=True)
    (layer / ".dockerignore").write_text("*.log\nbuild/\n")
    relevant = LayerFilter(tmp_path / "layers").relevant
    assert relevant(str(layer / "app.py")) == ("app", "app.py")
    assert relevant(str(layer / "layer.toml")) == ("app", "layer.toml")
    for ignored in (".app.py.swp", "app.py~", "4913", ".#app.py", "debug.log",
                    "build/out.o", ".git/HEAD"):
        assert relevant(str(layer / ignored)) is None, ignored
    assert relevant(str(tmp_path / "elsewhere.txt")) is None


def test_secrets_are_redacted_from_logs() -> None:
    stream = io.StringIO()
    logs.configure(stream, json=True)
    structlog.get_logger("t").info("registry_call", password="hunter2",
                                   header="Authorization: Bearer abc.def.ghi", layer="x")
    line = json.loads(stream.getvalue())
    assert line["password"] == "[redacted]" and "abc.def" not in line["header"]
    assert line["layer"] == "x" and line["event"] == "registry_call"
    assert line["timestamp"].endswith("Z") and line["level"] == "info"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_file_digests_are_reused_until_the_file_changes(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.catalog import context, tomlfile

    path = tmp_path / "f.txt"
    path.write_text("one")
    first = context.file_digest(path)
    reads: list[Path] = []

    class CountingOS:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def open(self, file: Path, *args: Any) -> int:
            reads.append(Path(file))
            return os.open(file, *args)

    monkeypatch.setattr(tomlfile, "os", CountingOS())  # where files are opened
    assert context.file_digest(path) == first and reads == []  # stat unchanged: not read
    path.write_text("two!")
    reads.clear()
    assert context.file_digest(path) != first and reads == [path]
