"""The pure core: graph, .dockerignore, build keys, plan decisions, versions, templates."""

from __future__ import annotations

import pytest

from orchestrator.core import graph
from orchestrator.core.buildkey import build_key, context_digest, first_changed_path, key_tag
from orchestrator.core.dockerignore import DockerIgnore
from orchestrator.core.durations import parse_duration
from orchestrator.core.errors import TemplateError
from orchestrator.core.model import FileEntry, Inputs, Reason
from orchestrator.core.plan import decide, is_due
from orchestrator.core.templates import expand, upstream_values
from orchestrator.core.versions import check_track, newest

PARENTS = {"os": None, "pyenv": "os", "py:1": "pyenv", "py:2": "pyenv", "flask": "py:1",
           "app": "flask", "tools": "os"}


def test_topological_order_puts_parents_first() -> None:
    order = graph.topological_order(PARENTS)
    assert sorted(order) == sorted(PARENTS)
    for node, parent in PARENTS.items():
        if parent is not None:
            assert order.index(parent) < order.index(node)


def test_descendants_and_ancestors() -> None:
    assert graph.descendants(PARENTS, ["pyenv"]) == {"pyenv", "py:1", "py:2", "flask", "app"}
    assert graph.ancestors(PARENTS, "app") == ["flask", "py:1", "pyenv", "os"]
    assert graph.ancestors(PARENTS, "os") == []


def test_cycle_detection_reports_the_cycle() -> None:
    assert graph.find_cycle(PARENTS) is None
    assert graph.find_cycle({"x": None, "b": "c", "c": "a", "a": "b"}) == ["a", "b", "c", "a"]
    assert graph.find_cycle({"a": "a"}) == ["a", "a"]


@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    ("*.tmp", "x.tmp", True),
    ("*.tmp", "sub/x.tmp", False),  # * does not cross directories
    ("**/*.tmp", "sub/deep/x.tmp", True),
    ("**/*.tmp", "x.tmp", True),
    (".git", ".git/config", True),  # a matched directory takes its content along
    ("build\n!build/keep.txt", "build/keep.txt", False),
    ("build\n!build/keep.txt", "build/other.txt", True),
    ("/docs", "docs/a.md", True),
    ("# comment\n\n", "anything", False),
    ("file?.txt", "file1.txt", True),
    ("file[0-9].txt", "filea.txt", False),
    ("*\n!Dockerfile", "Dockerfile", False),
])
def test_dockerignore_rules(patterns: str, path: str, excluded: bool) -> None:
    assert DockerIgnore.parse(patterns).excluded(path) is excluded


def _inputs(**changes: object) -> Inputs:
    base: dict[str, object] = {
        "dockerfile": "d1", "files": (FileEntry("a", 0o100644, "h1"),),
        "args": (("V", "1"),), "parent_digest": "sha256:p1",
    }
    base.update(changes)
    return Inputs(**base)  # type: ignore[arg-type]


def test_build_key_encoding_is_stable() -> None:
    """Keys name images in registries: a new release must compute the same key
    for the same inputs (or bump KEY_VERSION). Values computed by the first
    encoding, field by field into the hash."""
    inputs = Inputs("d" * 64, (FileEntry("b.txt", 0o100644, "e" * 64),
                               FileEntry("a/", 0o40755, ""),
                               FileEntry("a/\u00fc", 0o120777, "f" * 64)),
                    (("Z", "1"), ("A", "x y")), "sha256:" + "1" * 64,
                    bases=(("docker.io/library/alpine:3", "sha256:" + "2" * 64),),
                    platforms=("linux/arm64", "linux/amd64"), secrets=("tok", "npm"))
    assert build_key(inputs) == \
        "8c8904861521269d5502ff1b5ab41340bcd8dc428599d74eeb8df8817320a941"
    assert context_digest(inputs.files) == \
        "deaea61287649d0aa5019883270d410f784a11eb9ea22f69efc4973dd668ac42"
    assert build_key(Inputs("", (), (), "")) == \
        "628a776bbb8ac3e63c0116df7353048877e339a8908b2c2891de77da1be21d04"


def test_build_key_covers_every_input() -> None:
    key = build_key(_inputs())
    assert key == build_key(_inputs())
    variants = [
        _inputs(dockerfile="d2"),
        _inputs(files=(FileEntry("a", 0o100755, "h1"),)),
        _inputs(files=(FileEntry("a", 0o100644, "h2"),)),
        _inputs(files=(FileEntry("b", 0o100644, "h1"),)),
        _inputs(args=(("V", "2"),)),
        _inputs(parent_digest="sha256:p2"),
    ]
    keys = {build_key(v) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert key_tag(key) == "bk-" + key and len(key) == 64


def test_build_key_fields_cannot_run_together() -> None:
    assert build_key(_inputs(args=(("AB", "C"),))) != build_key(_inputs(args=(("A", "BC"),)))


def test_first_changed_path() -> None:
    old = (FileEntry("a", 1, "x"), FileEntry("c", 1, "x"))
    assert first_changed_path(old, old) is None
    assert first_changed_path(old, (FileEntry("a", 1, "x"), FileEntry("b", 1, "x"),
                                    FileEntry("c", 1, "x"))) == "b"
    assert first_changed_path(old, (FileEntry("a", 1, "y"), FileEntry("c", 1, "x"))) == "a"


@pytest.mark.parametrize(("current", "previous", "found", "kwargs", "reason", "detail"), [
    (_inputs(), None, False, {}, Reason.NEVER_BUILT, ""),
    (_inputs(), _inputs(), True, {"forced": True}, Reason.FORCED, ""),
    (None, None, False, {}, Reason.PARENT_REBUILT, ""),
    (_inputs(dockerfile="d2"), _inputs(), False, {}, Reason.CONTEXT_CHANGED, "Dockerfile"),
    (_inputs(files=(FileEntry("a", 0o100644, "h2"),)), _inputs(), False, {},
     Reason.CONTEXT_CHANGED, "a"),
    (_inputs(args=(("V", "2"),)), _inputs(), False, {}, Reason.ARGS_CHANGED, "V"),
    (_inputs(parent_digest="sha256:p2"), _inputs(), False, {"parent_is_upstream": True},
     Reason.UPSTREAM_CHANGED, "sha256:p1 -> sha256:p2"),
    (_inputs(parent_digest="sha256:p2"), _inputs(), False, {}, Reason.PARENT_REBUILT,
     "sha256:p1 -> sha256:p2"),
    (_inputs(), _inputs(), False, {}, Reason.IMAGE_MISSING, ""),
    (_inputs(), _inputs(), True, {"due": True}, Reason.SCHEDULED, ""),
])
def test_decide_says_why(current: Inputs | None, previous: Inputs | None, found: bool,
                         kwargs: dict[str, bool], reason: Reason, detail: str) -> None:
    decision = decide("x", current, previous, image_found=found, **kwargs)
    assert decision.build and decision.reason is reason and decision.detail == detail


def test_decide_up_to_date_when_the_key_exists() -> None:
    decision = decide("x", _inputs(), None, image_found=True)
    assert not decision.build and decision.describe() == "up to date"


def test_periodic_rebuild_due() -> None:
    assert is_due(100.0, 50.0, 151.0)
    assert not is_due(100.0, 50.0, 120.0)
    assert not is_due(100.0, None, 1e9)


@pytest.mark.parametrize(("track", "expected"), [
    ("semver", "v2.4.17"),
    ("semver:~2.3", "v2.3.36"),
    ("semver:^2.3", "v2.4.17"),
    ("semver:>=2.0,<2.4", "v2.3.36"),
    ("semver:1.x", "1.2.14"),
    (r"regex:v2\.3\.\d+", "v2.3.36"),
])
def test_newest_tag_by_policy(track: str, expected: str) -> None:
    tags = ["1.2.14", "v2.3.9", "v2.3.36", "v2.4.17", "v2.5.0-rc1", "latest", "v2.4.2"]
    assert newest(tags, track) == expected


def test_alpine_style_two_part_tags() -> None:
    assert newest(["3.19", "3.20", "3.20.3", "3.9", "edge"], "semver:~3") == "3.20.3"


def test_bad_track_policies() -> None:
    assert check_track("semver:~3") is None
    assert "unknown track policy" in (check_track("newest") or "")
    assert check_track("semver:>>3") is not None
    assert check_track("regex:(") is not None


def test_templates() -> None:
    values = {"python": "3.12.7", **upstream_values("pyenv", "v2.4.17", "abc")}
    assert expand("{python}-{upstream.pyenv.version}", values) == "3.12.7-2.4.17"
    assert expand("{{literal}}", values) == "{literal}"
    with pytest.raises(TemplateError, match="unknown placeholder"):
        expand("{nope}", values)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("6h", 21600), ("7d", 604800), ("1h30m", 5400), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "fifteen minutes", "5x", "1h 30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)
