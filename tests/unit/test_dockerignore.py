"""The ignore-file rules of the engines (``orchestrator.core.dockerignore``).

Each expectation comes from the engines' sources (BuildKit 0.8 ReadAll, docker
pkg/fileutils 20.10 + fsutil Walk; imagebuilder ParseIgnore, containers/storage
1.43 fileutils + buildah's copier) and was observed on Docker 20.10.24 and
buildah 1.28.2 (tests/integration/test_dockerignore_differential.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator.core.dockerignore import ENGINES, DockerIgnore, ignore_file_for

BOTH = ("docker", "buildah")


def sent(text: str, engine: str, *paths: str) -> dict[str, bool]:
    ignore = DockerIgnore.parse(text, engine)
    return {path: not ignore.excluded(path) for path in paths}


# -- one test per rule --------------------------------------------------------

@pytest.mark.parametrize("engine", BOTH)
def test_double_star_inside_a_pattern_matches_whole_directories_only(engine: str) -> None:
    # "**" not at the end is "(.*/)?": zero or more whole directories.
    assert sent("src/**_test.go", engine, "src/_test.go", "src/pkg/_test.go",
                "src/pkg/foo_test.go", "src/foo_test.go") == {
        "src/_test.go": False, "src/pkg/_test.go": False,
        "src/pkg/foo_test.go": True, "src/foo_test.go": True}


@pytest.mark.parametrize("engine", BOTH)
def test_double_star_at_the_end_takes_everything_below(engine: str) -> None:
    # ... but not the directory itself: "src/**" is ^src/.*$, so an empty src/ is sent
    assert sent("src/**", engine, "src", "src/a", "src/a/b", "srcx") == {
        "src": True, "src/a": False, "src/a/b": False, "srcx": True}


@pytest.mark.parametrize("engine", BOTH)
def test_bang_in_brackets_is_a_class_not_a_negation(engine: str) -> None:
    # [...] goes to Go's regexp unchanged: [!a] is the class of "!" and "a".
    assert sent("x[!a]y", engine, "xay", "x!y", "xby") == {
        "xay": False, "x!y": False, "xby": True}


@pytest.mark.parametrize("engine", BOTH)
def test_caret_in_brackets_negates_and_crosses_slashes(engine: str) -> None:
    assert sent("x[^a]y", engine, "xay", "xby", "x y", "x/y") == {
        "xay": True, "xby": False, "x y": False, "x/y": False}


@pytest.mark.parametrize("engine", BOTH)
@pytest.mark.parametrize("text", ["x[", "[]a]", "[a-]", "[z-a]", "a\\", "!", "!/", "(a", "a++",
                                  "x{2}{3}", "\\q", "\\1"])
def test_patterns_the_engines_refuse_fail_the_build(text: str, engine: str) -> None:
    # filepath.Match's syntax check, a lone "!", or a Go regexp that does not compile
    ignore = DockerIgnore.parse(f"*.log\n{text}\n", engine)
    assert ignore.error is not None
    assert ignore.patterns == ("*.log",)  # what came before still reads


@pytest.mark.parametrize("engine", BOTH)
def test_backslash_escapes_the_next_character(engine: str) -> None:
    assert sent("\\!x\n\\[a]\nab\\.txt\nx\\ y", engine, "!x", "[a]", "a", "ab.txt", "abxtxt",
                "x y") == {"!x": False, "[a]": False, "a": True, "ab.txt": False,
                           "abxtxt": True, "x y": False}


def test_bom_on_line_one_is_dropped_by_docker_only() -> None:
    text = "\ufeff#x\n"
    assert sent(text, "docker", "#x") == {"#x": True}  # a comment
    # buildah keeps the BOM: not a comment; Go's scanner skips it in the regexp
    assert sent(text, "buildah", "#x") == {"#x": False}
    assert DockerIgnore.parse("\ufeff!keep\n*\n", "buildah").patterns == ("\ufeff!keep", "*")
    assert DockerIgnore.parse("\ufeff!keep\n*\n", "docker").patterns == ("!keep", "*")


@pytest.mark.parametrize("engine", BOTH)
def test_only_a_hash_in_the_first_column_starts_a_comment(engine: str) -> None:
    assert sent("#x\n  # x\n", engine, "#x", "# x") == {"#x": True, "# x": False}


@pytest.mark.parametrize("engine", BOTH)
def test_whitespace_around_a_pattern_is_go_whitespace(engine: str) -> None:
    assert sent("*.txt \t\n\tdata.json\r\n", engine, "a.txt", "data.json") == {
        "a.txt": False, "data.json": False}
    # U+001C is whitespace to Python's str.strip, not to Go's TrimSpace
    assert DockerIgnore.parse("a\x1c\n", engine).patterns == ("a\x1c",)


@pytest.mark.parametrize("engine", BOTH)
def test_lines_split_on_newline_only(engine: str) -> None:
    assert DockerIgnore.parse("a\rb\n", engine).patterns == ("a\rb",)
    assert DockerIgnore.parse("a\u2028b\x0bc", engine).patterns == ("a\u2028b\x0bc",)
    assert DockerIgnore.parse("a\r\nb\r\n", engine).patterns == ("a", "b")


@pytest.mark.parametrize("engine", BOTH)
def test_leading_slash_dot_slash_and_dot_dot(engine: str) -> None:
    assert sent("/bar\n./src\nsrc2/\n//a\nb/../c", engine, "bar", "src/x", "src2/y", "a",
                "c") == {"bar": False, "src/x": False, "src2/y": False, "a": False, "c": False}
    assert sent("../a", engine, "a") == {"a": True}


def test_slash_dot_dot() -> None:
    # docker cleans "/../ab" to "/ab", then drops the "/"; buildah trims the
    # slashes first and keeps "../ab", which matches nothing.
    assert sent("/../ab", "docker", "ab") == {"ab": False}
    assert sent("/../ab", "buildah", "ab") == {"ab": True}


def test_space_before_a_leading_slash() -> None:
    # docker trims whitespace, then drops "/"; buildah trims "/" first, then spaces.
    assert sent(" /bar", "docker", "bar") == {"bar": False}
    assert sent(" /bar", "buildah", "bar") == {"bar": True}


def test_space_after_the_bang() -> None:
    # docker trims after "!"; buildah re-includes " bar" (with the space)
    assert sent("*\n! bar", "docker", "bar", " bar") == {"bar": True, " bar": False}
    assert sent("*\n! bar", "buildah", "bar", " bar") == {"bar": False, " bar": True}


@pytest.mark.parametrize("engine", BOTH)
def test_other_regexp_syntax_passes_through(engine: str) -> None:
    assert sent("a|b", engine, "a", "ab", "xb", "a/c", "x") == {
        "a": False, "ab": False, "xb": False, "a/c": False, "x": True}
    assert sent("a+b", engine, "aab", "b") == {"aab": False, "b": True}
    assert sent("(x|b)", engine, "x", "b", "xb") == {"x": False, "b": False, "xb": True}
    assert sent("a{2}b", engine, "aab", "a{2}b") == {"aab": False, "a{2}b": True}
    assert sent("{a,b}", engine, "{a,b}", "a") == {"{a,b}": False, "a": True}
    assert sent("[[:alpha:]]", engine, "b", "1", ":") == {"b": False, "1": True, ":": True}
    assert sent("\\x62\n\\d", engine, "b", "7", "x62") == {"b": False, "7": False, "x62": True}
    assert sent("$x\n^y", engine, "$x", "y", "^y") == {"$x": False, "y": False, "^y": True}
    # "?" is still [^/]: "(?i)" is no flag group but a group around one character
    assert sent("(?i)readme*", engine, "README.md", "xireadme.md") == {
        "README.md": True, "xireadme.md": False}


@pytest.mark.parametrize("engine", BOTH)
def test_a_matched_directory_takes_its_content(engine: str) -> None:
    assert sent("a/b", engine, "a/b/c/d", "a/bc") == {"a/b/c/d": False, "a/bc": True}


def test_docker_checks_only_one_ancestor_inside_an_entered_directory() -> None:
    # Entered for the "!" pattern; then a/b/x/other is tested against **/x
    # directly and on its ancestor "a/b" (the pattern's depth) only.
    text = "**/x\n!a/b/x/keep"
    assert sent(text, "docker", "a/b/x/other", "a/b/x/keep", "a/x") == {
        "a/b/x/other": True, "a/b/x/keep": True, "a/x": False}
    assert sent(text, "buildah", "a/b/x/other", "a/b/x/keep", "a/x") == {
        "a/b/x/other": False, "a/b/x/keep": True, "a/x": False}


def test_which_excluded_directories_the_walk_enters() -> None:
    # docker: a "!" pattern must start with "dir/"; buildah: "pattern/" must
    # start with the directory's path as a string.
    text = "a\n!a*/x"
    assert sent(text, "docker", "a/x", "a/y") == {"a/x": False, "a/y": False}
    assert sent(text, "buildah", "a/x", "a/y") == {"a/x": True, "a/y": False}
    docker = DockerIgnore.parse(text, "docker")
    buildah = DockerIgnore.parse(text, "buildah")
    assert not docker.may_include_below("a")
    assert buildah.may_include_below("a")


def test_an_entered_excluded_directory_is_sent_by_docker_only() -> None:
    text = "e\n!e/nothing"
    docker = DockerIgnore.parse(text, "docker")
    buildah = DockerIgnore.parse(text, "buildah")
    assert not docker.excluded("e", directory=True)
    assert not docker.excluded("e/")
    assert buildah.excluded("e", directory=True)
    assert docker.excluded("e/other") and buildah.excluded("e/other")
    assert docker.may_include_below("e") and buildah.may_include_below("e")


@pytest.mark.parametrize("engine", BOTH)
def test_may_include_below(engine: str) -> None:
    ignore = DockerIgnore.parse("node_modules\n.git\nbuild\n!build/keep.txt\n", engine)
    assert not ignore.may_include_below("node_modules")
    assert not ignore.may_include_below(".git")
    assert ignore.may_include_below("src/.git")  # only the top-level .git
    assert ignore.may_include_below("build")
    assert ignore.may_include_below("src")
    assert ignore.may_include_below("")
    assert not ignore.excluded("build/keep.txt") and ignore.excluded("build/other")
    nothing_back = DockerIgnore.parse("node_modules\n", engine)
    assert not nothing_back.may_include_below("node_modules/pkg")


@pytest.mark.parametrize("engine", BOTH)
def test_paths_are_normalised(engine: str) -> None:
    ignore = DockerIgnore.parse("*.log", engine)
    assert ignore.excluded("./x.log") and ignore.excluded("x.log/")
    assert not ignore.excluded("") and not ignore.excluded(".")


def test_engine_names() -> None:
    assert set(ENGINES) == {"buildah", "docker", "buildkit"}
    assert DockerIgnore.parse("a").engine == "buildah"  # the default backend
    assert DockerIgnore.parse("a", "buildkit").engine == "buildkit"
    with pytest.raises(ValueError, match="unknown engine"):
        DockerIgnore([], "podman")
    with pytest.raises(ValueError, match="unknown engine"):
        ignore_file_for("kaniko", "Dockerfile", lambda _: True)


def test_empty_and_comment_only_files() -> None:
    for engine in ENGINES:
        assert DockerIgnore.parse("", engine).empty
        assert DockerIgnore.parse("# only\n\n   \n", engine).empty
        assert not DockerIgnore.parse("# only\n\n   \n", engine).excluded("anything")
        assert DockerIgnore.parse("", engine).error is None


def test_a_line_docker_cannot_read_fails_the_build() -> None:
    long_line = "a" * (64 * 1024)
    assert DockerIgnore.parse(long_line, "docker").error is not None
    assert DockerIgnore.parse(long_line, "buildah").error is None


# -- which file each engine reads ---------------------------------------------

def _exists(*names: str) -> Callable[[str], bool]:
    present = set(names)
    return lambda rel: rel in present


@pytest.mark.parametrize(("engine", "files", "dockerfile", "chosen"), [
    ("docker", [".dockerignore"], "Dockerfile", ".dockerignore"),
    ("docker", [".dockerignore", ".containerignore"], "Dockerfile", ".dockerignore"),
    ("docker", [".containerignore"], "Dockerfile", None),
    ("docker", [".dockerignore", "Dockerfile.dockerignore"], "Dockerfile",
     "Dockerfile.dockerignore"),
    ("docker", [".dockerignore", "Dockerfile.containerignore"], "Dockerfile", ".dockerignore"),
    ("docker", [".dockerignore", "sub/Build.df.dockerignore"], "sub/Build.df",
     "sub/Build.df.dockerignore"),
    ("docker", [".dockerignore", "Build.df.dockerignore"], "sub/Build.df", ".dockerignore"),
    ("docker", [".dockerignore", "Dockerfile.dockerignore"], "./Dockerfile",
     "Dockerfile.dockerignore"),
    ("buildkit", [".containerignore", "Dockerfile.dockerignore"], "Dockerfile",
     "Dockerfile.dockerignore"),
    ("buildah", [".dockerignore"], "Dockerfile", ".dockerignore"),
    ("buildah", [".dockerignore", ".containerignore"], "Dockerfile", ".containerignore"),
    ("buildah", [".containerignore", "Dockerfile.containerignore"], "Dockerfile",
     "Dockerfile.containerignore"),
    ("buildah", ["Dockerfile.containerignore", "Dockerfile.dockerignore"], "Dockerfile",
     "Dockerfile.dockerignore"),
    ("buildah", [".dockerignore", "df/Dockerfile.dockerignore"], "df/Dockerfile",
     "df/Dockerfile.dockerignore"),
    ("buildah", [], "Dockerfile", None),
    ("docker", ["../Dockerfile.dockerignore", ".dockerignore"], "../Dockerfile",
     "../Dockerfile.dockerignore"),
])
def test_ignore_file_for(engine: str, files: list[str], dockerfile: str,
                         chosen: str | None) -> None:
    assert ignore_file_for(engine, dockerfile, _exists(*files)) == chosen


# -- a table, each row seen on the real engines -------------------------------

TABLE = [
    # (lines, path, excluded on docker, excluded on buildah)
    ("*.tmp", "x.tmp", True, True),
    ("*.tmp", "sub/x.tmp", False, False),
    ("**/*.tmp", "sub/deep/x.tmp", True, True),
    ("**/*.tmp", "x.tmp", True, True),
    ("*", "a/b", True, True),
    ("*/*", "a", False, False),
    ("*/*", "a/b/c", True, True),
    ("?", "b", True, True),
    ("?", "ab", False, False),
    ("a?", "ab/c/f", True, True),
    (".*", ".hidden", True, True),
    (".*", "a/.hidden", False, False),
    ("src/**_test.go", "src/pkg/foo_test.go", False, False),
    ("src/**/_test.go", "src/pkg/deep/_test.go", True, True),
    ("[^a]", "!", True, True),
    ("[^a]", "a", False, False),
    ("[!a]", "!", True, True),
    ("[!a]", "b", False, False),
    ("[a]", "a", True, True),
    ("[a]", "[a]", False, False),
    ("\\[a]", "[a]", True, True),
    ("#x", "#x", False, False),
    ("  # x", "# x", True, True),
    ("\ufeff#x", "#x", False, True),
    ("\ufeff*.go", "a.go", True, True),
    (" /bar", "bar", True, False),
    ("*\n! bar", " bar", True, False),
    ("*\n!  bar", "bar", False, True),
    ("*\n!\\ bar", " bar", False, False),
    ("build\n!build/keep.txt", "build/keep.txt", False, False),
    ("build\n!build/keep.txt", "build/other.txt", True, True),
    ("*\n!Dockerfile", "Dockerfile", False, False),
    ("*\n!src/pkg", "src/pkg/foo_test.go", False, False),
    ("*\n!src/pkg", "src/foo_test.go", True, True),
    ("**/x\n!a/b/x/keep", "a/b/x/other", False, True),
    ("a\n!a*/x", "a/x", True, False),
    ("a\n!ab/c", "a/x", True, True),
    ("a/b\n!a/b/x/keep", "a/b/x/other", True, True),
    ("**/x/**\n!x/**", "x/a", False, False),
    ("**/b/**", "a/b", False, False),
    ("**/b/**", "a/b/c", True, True),
    ("**/b/**", "ab/c", False, False),
    ("a|b", "ab.txt", True, True),
    ("a+b", "aab", True, True),
    ("(x|b)", "xb", False, False),
    ("é*", "é.txt", True, True),
    ("$x", "$x", True, True),
    ("x.y", "xay", False, False),
    ("x?y", "x.y", True, True),
    ("empty", "empty", True, True),
    ("a/..", "a", False, False),
    ("keep/", "keep/k", True, True),
    ("!x/**", "x/a", False, False),
]


@pytest.mark.parametrize(("text", "path", "on_docker", "on_buildah"), TABLE)
def test_table(text: str, path: str, on_docker: bool, on_buildah: bool) -> None:
    assert DockerIgnore.parse(text, "docker").excluded(path) is on_docker
    assert DockerIgnore.parse(text, "buildkit").excluded(path) is on_docker
    assert DockerIgnore.parse(text, "buildah").excluded(path) is on_buildah
