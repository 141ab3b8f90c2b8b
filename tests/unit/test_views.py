"""The views: the board every view draws from, the terminal tree, the picture's
Graphviz source, the history read for plots, and ``[web]`` settings."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.build.state import LayerRecord, StateStore
from orchestrator.build.state.readonly import History
from orchestrator.catalog.config import load_config
from orchestrator.cli.live import LiveView, describe, last_output_line, wanted
from orchestrator.core.errors import InputError
from orchestrator.core.model import Inputs
from orchestrator.core.picture import PictureLayer, dot_source, with_style
from orchestrator.core.runboard import Board, event_time, upstream_value

CHAIN = [("base", None, "seed", ("1.0",)), ("tools", "base", None, ()),
         ("app", "tools", None, ("0.1",)), ("other", "base", None, ())]


def board() -> Board:
    made = Board.of(CHAIN)
    made.start_run([lid for lid, *_ in CHAIN], now=100.0)
    return made


def test_a_run_starts_with_roots_queued_and_children_waiting() -> None:
    b = board()
    assert {lid: r.state for lid, r in b.rows.items()} == {
        "base": "queued", "tools": "waiting", "app": "waiting", "other": "waiting"}


def test_a_parent_done_releases_its_children_and_a_failure_skips_below() -> None:
    b = board()
    assert b.apply("layer_up_to_date", {"layer": "base", "digest": "sha256:a"}, 101) == {
        "base", "tools", "other"}
    assert b.rows["tools"].state == "queued" and b.rows["base"].state == "reused"
    b.apply("build_started", {"layer": "tools", "builder": "local", "build_id": "b1",
                              "log": "/x.log"}, 102)
    assert (b.rows["tools"].state, b.rows["tools"].builder, b.rows["tools"].since) == (
        "building", "local", 102)
    changed = b.apply("build_finished", {"layer": "tools", "outcome": "failed",
                                         "error": "\nERROR: exit 3\nmore", "duration_s": 4},
                      106)
    assert changed == {"tools", "app"}
    assert b.rows["tools"].error == "ERROR: exit 3"  # its first error line stays
    assert (b.rows["app"].state, b.rows["app"].error) == ("skipped", "parent tools failed")
    assert b.rows["other"].state == "queued"  # an independent branch carries on
    assert b.counts() == {"reused": 1, "failed": 1, "skipped": 1, "queued": 1}


def test_events_about_unknown_layers_or_odd_fields_change_nothing() -> None:
    b = board()
    assert b.apply("build_started", {"layer": "nope"}, 1) == set()
    assert b.apply("build_finished", {"layer": None}, 1) == set()
    assert b.apply("trigger_received", {"layers": ["nope", "app"]}, 1) == {"app"}
    assert b.apply("build_finished", {"layer": "base", "outcome": "weird"}, 2) >= {"base"}
    assert b.rows["base"].state == "failed"


def test_settle_says_what_no_event_said() -> None:
    b = board()
    assert b.settle({"other": "skipped", "app": "superseded", "gone": "built"},
                    {"other": "parent base failed\nsecond", "app": None}) == {"other", "app"}
    assert (b.rows["other"].state, b.rows["other"].error) == ("skipped", "parent base failed")


def test_upstream_value_is_short() -> None:
    assert upstream_value("3.20", "sha256:" + "ab" * 32) == "3.20 @ sha256:abababababab"
    assert upstream_value(None, "0123456789abcdef0123") == "0123456789ab"


# -- the terminal view ----------------------------------------------------------------


def render(view: LiveView, width: int = 80, height: int = 40) -> str:
    console = Console(file=io.StringIO(), width=width, height=height, record=True,
                      color_system=None, force_terminal=False)
    view.console = console
    console.print(view.render())
    return console.export_text()


def test_the_tree_shows_states_elapsed_time_and_the_builders_last_line(
    tmp_path: Path,
) -> None:
    log = tmp_path / "b1.log"
    log.write_text("$ buildah bud --very long command line\nSTEP 2/3: RUN make\n"
                   "\x1b[32mcompiling module 7 of 9\x1b[0m\r\n\n")
    b = board()
    b.upstreams["seed"] = "1 @ sha256:7483f15122eb"
    b.apply("layer_up_to_date", {"layer": "base"}, 101)
    b.apply("build_started", {"layer": "tools", "builder": "local", "log": str(log)}, 110)
    view = LiveView(b, Console(), clock=lambda: 172.0)
    text = render(view)
    assert "├── tools" in text and "building 1m02s on local" in text
    assert "> compiling module 7 of 9" in text  # colours and \r gone, command echo skipped
    assert "│   └── app" in text and "waiting on tools" in text
    assert "upstreams: seed 1 @ sha256:7483f15122eb" in text
    assert "4 layers: 1 building, 1 queued, 1 waiting, 1 up to date · 1m12s elapsed" in text


def test_output_lines_are_cut_to_the_width(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("x" * 500 + "\n")
    b = board()
    b.apply("build_started", {"layer": "base", "builder": "local", "log": str(log)}, 100)
    text = render(LiveView(b, Console(), clock=lambda: 101.0), width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "…" in text


def test_a_tall_tree_shows_the_moving_rows_first() -> None:
    rows = [("root", None, None, ())] + [(f"l{i}", "root", None, ()) for i in range(100)]
    b = Board.of(rows)
    b.start_run([lid for lid, *_ in rows], 0)
    b.apply("layer_up_to_date", {"layer": "root"}, 1)
    for i in range(99):
        b.apply("layer_up_to_date", {"layer": f"l{i}"}, 1)
    b.apply("build_started", {"layer": "l99", "builder": "local"}, 2)
    text = render(LiveView(b, Console(), clock=lambda: 3.0), height=20)
    assert "l99" in text and "building 1s" in text
    assert "100 finished layers not shown" in text


def test_failed_layers_keep_their_first_error_line() -> None:
    b = board()
    b.apply("build_finished", {"layer": "base", "outcome": "failed",
                               "error": "ERROR: tests failed"}, 1)
    assert describe(b.rows["base"], 2) == "FAILED: ERROR: tests failed"
    assert describe(b.rows["app"], 2) == "skipped: parent base failed"


def test_last_output_line_of_a_missing_or_empty_log() -> None:
    assert last_output_line(None) == ""
    assert last_output_line("/nonexistent/x.log") == ""


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_view_only_on_a_terminal_that_can_draw(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert wanted(_Tty()) and not wanted(io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not wanted(_Tty())
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wanted(_Tty())


def test_status_watch_reads_the_daemons_view_and_keeps_what_events_said() -> None:
    from orchestrator.cli.watch import board_from_layers

    layers = [{"layer": "base", "parent": None, "upstream": "seed", "tags": ["1.0"],
               "state": "building", "since": 10.0, "builder": "local", "build_id": "b1"},
              {"layer": "app", "parent": "base", "state": "stale", "why": "context changed: x"},
              {"layer": "lib", "parent": "base", "state": "failed", "error": "ERROR: boom"}]
    first = board_from_layers(layers)
    first.rows["base"].log = "/logs/b1.log"  # from the build_started event
    again = board_from_layers(layers, first)
    assert again.rows["base"].log == "/logs/b1.log"
    assert describe(again.rows["app"], 0) == "stale: context changed: x"
    assert describe(again.rows["lib"], 0) == "FAILED: ERROR: boom"
    assert describe(again.rows["base"], 75.0) == "building 1m05s on local"



def test_status_watch_keeps_drawing_after_a_run_starts() -> None:
    """The daemon's /v1/events stamps ISO-8601 (as its log lines do): the footer's
    clock must read it, or the first run_started stops every redraw."""
    from orchestrator.cli.watch import StatusWatch

    view = LiveView(Board.of(CHAIN), Console(), clock=lambda: 1796697600.0 + 75)
    watch = StatusWatch(client=None, view=view)  # type: ignore[arg-type]
    watch.on_record({"event": "run_started", "timestamp": "2026-12-08T02:40:00Z"})
    assert "· 1m15s elapsed" in render(view)


def test_event_times_read_iso_8601_and_epoch_seconds() -> None:
    assert event_time("2026-12-08T02:40:00Z", 0.0) == 1796697600.0
    assert event_time("2026-12-08T02:40:00.250000Z", 0.0) == 1796697600.25
    assert event_time(12.5, 0.0) == 12.5
    assert event_time("yesterday", 7.0) == event_time(None, 7.0) == 7.0

# -- the picture ---------------------------------------------------------------------


def test_the_dot_source_quotes_names_and_links_nodes() -> None:
    layers = [PictureLayer("base", None, "seed", ("1.0",), "up_to_date", last_build=0.0),
              PictureLayer('we"ird\\x', "base", None, (), "building", "building on local")]
    source = dot_source(layers, {"seed": "1 @ sha256:abc"}, link="/layers/")
    assert '"upstream:seed" -> "base";' in source
    assert '"base" -> "we\\"ird\\\\x";' in source
    assert 'URL="/layers/we%22ird%5Cx"' in source
    assert 'label="base\\nup to date\\ntags: 1.0\\nbuilt 1970-01-01 00:00 UTC"' in source
    assert 'class="layer state-building"' in source
    proc = subprocess.run(["dot", "-Tsvg"], input=source, capture_output=True, text=True,
                          check=True)  # Graphviz accepts it
    svg = with_style(proc.stdout)
    assert 'id="layer&#45;base"' in svg and "<style>" in svg


def test_graph_svg_from_the_cli_without_a_daemon(tmp_path: Path) -> None:
    (tmp_path / "layers" / "a").mkdir(parents=True)
    (tmp_path / "layers" / "b").mkdir()
    (tmp_path / "config.toml").write_text('[state]\ndir = "state"\n[upstream.seed]\n'
                                          'image = "reg.example/seed"\ntag = "1"\n')
    (tmp_path / "layers/a/layer.toml").write_text('from = "upstream:seed"\ntags = ["1.0"]\n')
    (tmp_path / "layers/b/layer.toml").write_text('from = "a"\n')
    for name in ("a", "b"):
        (tmp_path / "layers" / name / "Dockerfile").write_text(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 1000\n")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "-c",
                           str(tmp_path / "config.toml"), "graph", "--format", "svg"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("<?xml") and 'id="layer&#45;b"' in proc.stdout
    assert "no build yet" in proc.stdout
    assert not (tmp_path / "state").exists()  # reading the picture made no state dir


def test_graph_svg_loads_no_http_stack() -> None:
    code = ("import sys, orchestrator.cli.render as r, orchestrator.build.state.readonly, "
            "orchestrator.core.picture, graphviz; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiohttp', 'jinja2', 'rich', 'aiohttp_sse')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- history ------------------------------------------------------------------------


def test_history_reads_durations_and_queue_depth_without_writing(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    assert History(db).built_at() == {} and not db.exists()
    store = StateStore(db)
    store.history.start("b1", "a", "k1", "never built", None)
    store.history.finish("b1", "built", "sha256:1")
    store.work.add_request("r1", ["a", "b"], force=False, cause="x")
    inputs = Inputs(dockerfile="d" * 64, files=(), args=(), parent_digest="sha256:" + "0" * 64)
    store.records.save(LayerRecord("a", "k1", "sha256:1", "reg/a@sha256:1", inputs, 50.0))
    store.close()
    history = History(db)
    assert history.built_at() == {"a": 50.0}
    assert history.last_outcomes() == {"a": "built"}
    durations = history.durations(0)
    assert list(durations) == ["a"] and durations["a"][0].value >= 0
    depth = history.queue_depth(0, now=10**10)
    assert [s.value for s in depth][-1] == 2.0  # the open request's two layers
    with sqlite3.connect(db) as conn:  # still a healthy database others can write
        conn.execute("SELECT count(*) FROM builds").fetchone()


# -- [web] settings ------------------------------------------------------------------


def _config(tmp_path: Path, web: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(web))
    return path


def test_web_settings(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "")).web.listen is None
    config = load_config(_config(tmp_path, '[web]\nlisten = "9465"\ntoken_file = "t"\n'
                                           'hosts = ["Builds.example.org"]\n'))
    assert config.web.listen == ("127.0.0.1", 9465)
    assert config.web.hosts == ("builds.example.org",)
    assert config.web.token_file == tmp_path / "t"
    with pytest.raises(InputError, match=r"web.listen: expected HOST:PORT"):
        load_config(_config(tmp_path, '[web]\nlisten = "everywhere"\n'))
    with pytest.raises(InputError, match="token"):
        load_config(_config(tmp_path, '[web]\ntokenfile = "t"\n'))
