"""Differential test: ``orchestrator.core.dockerignore`` against the real engines.

From a fixed seed, each case is a small context tree plus ignore file(s) drawn
from a vocabulary that exercises the rules the module models (``**`` in the
middle and at the end, ``[...]``, ``[!a]``, re-includes, leading ``/``, BOM,
indented comments, patterns the engines refuse, ``.containerignore``,
``Dockerfile.dockerignore``). Every case is built on both engines with
``FROM scratch`` + ``COPY . /ctx/`` and a local output (no RUN, no push, no
base image), and the files and directories each engine wrote are compared
with what ``DockerIgnore`` predicts for that engine. Builds the model says the
engine refuses must fail, and only those.

``ORCH_DIFF_CASES`` sets the number of cases (default 300), ``ORCH_DIFF_SEED``
the seed. Cases where the two engines send different things are printed (run
with ``-s``); each engine is held to its own rules.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.core.dockerignore import DockerIgnore, ignore_file_for
from tests.conftest import Testbed

pytestmark = [pytest.mark.integration, pytest.mark.long(3)]

DOCKER = "/usr/bin/docker"  # Debian's 20.10 CLI: honours DOCKER_BUILDKIT without buildx
CASES = int(os.environ.get("ORCH_DIFF_CASES", "300"))
SEED = int(os.environ.get("ORCH_DIFF_SEED", "20240611"))
WORKERS = 3  # per engine; both engines run at the same time
DOCKERFILE = "FROM scratch\nCOPY . /ctx/\n"

# -- the vocabulary -----------------------------------------------------------

DIRS = ["src", "src/pkg", "src/pkg/deep", "a", "a/b", "a/b/x", "ab", "ab/c", "x", "keep",
        "node_modules", "node_modules/m", ".git", "empty", "a/empty", "docs", "!d", "[a]d"]
FILES = ["a.go", "foo_test.go", "_test.go", "b.txt", "!x", "[a]", "a", "b", ".hidden",
         "keep", "x", "# x", "#x", "README.md", "main.c", "a+", "ab", "é.txt", " bar",
         "bar", "x.y", "$x", "data.json"]
PATTERNS = [
    "*.go", "**/*.go", "src/**_test.go", "src/**/_test.go", "**/_test.go", "src/**", "**",
    "*", "a/b", "a/*/x", "**/x", "**/x/**", "!**/keep", "!a/b/x/keep", "!a/b/x/keep/**",
    "!src/pkg/foo_test.go", "[a]", "\\[a]", "[!a]*", "[^a]*", "[^.]*", "?", "a?", "?/*",
    "/a", "./src", "src/", "a/..", "../a", "/../ab", "#x", "  # x", "\\!x", "!\\!x", ".*",
    "!.hidden", "a+", "ab*", "{a,b}", "a|b", "(a|ab)", "*.txt ", " /ab", "! keep",
    "!ab/c", "a", "!a*/x", "empty", "a/empty", "node_modules", "**/node_modules/**",
    "!*.txt", "*.txt", ".dockerignore", ".containerignore", "Dockerfile*", "!Dockerfile",
    "docs/*.md", "!docs", "**/*.md", "x.y", "x?y", "\\$x", "$x", "é*", "[[:alpha:]]",
    "[a-c]*", "*[0-9]*", "!d", "\\!d", "keep/", "!keep", "src/*/deep", "!src/pkg",
    "*/*", "*/*/*", "a/**/x", "**/b/**", "ab/**/c", "x/", "!x/**", "# comment",
    "\t*.json", "data.json\t", "!  bar", "\\ bar", "**/.git", ".git",
]
# The engines refuse these (lone "!", unclosed "[", trailing "\\", bad regexps).
REFUSED = ["!", "x[", "a\\", "(a", "[]a]", "[a-]", "a++", "[z-a]", "!/", "x{2}{3}"]


@dataclass
class Case:
    number: int
    dirs: list[str]
    files: list[str]
    ignore_files: dict[str, str]  # context-relative name -> text
    dockerfile_rel: str | None  # inside the context, or None for one outside it
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        files = "\n".join(f"    {name}: {text!r}" for name, text in self.ignore_files.items())
        where = self.dockerfile_rel or "(outside the context)"
        return f"case {self.number}, Dockerfile {where}, ignore files:\n{files}"


def _ignore_text(rng: random.Random) -> str:
    lines = rng.sample(PATTERNS, rng.randint(2, 7))
    if rng.random() < 0.06:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(REFUSED))
    if rng.random() < 0.15:
        lines.insert(0, rng.choice(["# header", "  # indented", "*.go", "a", "!keep"]))
        lines[0] = "\ufeff" + lines[0]
    if rng.random() < 0.1:
        lines.insert(rng.randrange(len(lines) + 1), "")
    end = "\r\n" if rng.random() < 0.1 else "\n"
    text = end.join(lines)
    return text + end if rng.random() < 0.8 else text


def make_cases(count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for number in range(count):
        dirs = sorted(set(rng.sample(DIRS, rng.randint(3, 9))))
        # parents first; every listed directory exists even when nothing is put in it
        dirs = sorted({"/".join(d.split("/")[:i + 1]) for d in dirs
                       for i in range(d.count("/") + 1)})
        files = []
        for folder in ["", *dirs]:
            if folder.endswith("empty"):
                continue
            for name in rng.sample(FILES, rng.randint(0, 4)):
                path = f"{folder}/{name}" if folder else name
                if path not in dirs:  # a name is a file or a directory, not both
                    files.append(path)
        ignore_files: dict[str, str] = {}
        dockerfile_rel: str | None = None
        roll = rng.random()
        if roll < 0.7:
            ignore_files[".dockerignore"] = _ignore_text(rng)
        elif roll < 0.8:
            ignore_files[".containerignore"] = _ignore_text(rng)
            if rng.random() < 0.6:
                ignore_files[".dockerignore"] = _ignore_text(rng)
        else:
            dockerfile_rel = rng.choice(["Dockerfile", "df/Dockerfile", "Build.df"])
            for name in rng.sample([".dockerignore", ".containerignore",
                                    dockerfile_rel + ".dockerignore",
                                    dockerfile_rel + ".containerignore"], rng.randint(1, 3)):
                ignore_files[name] = _ignore_text(rng)
        cases.append(Case(number, dirs, sorted(set(files)), ignore_files, dockerfile_rel))
    return cases


# -- building ---------------------------------------------------------------

@dataclass
class Outcome:
    ok: bool
    files: set[str]
    dirs: set[str]
    log: str


def _write_case(case: Case, root: Path) -> tuple[Path, Path]:
    context = root / "context"
    context.mkdir(parents=True)
    for folder in case.dirs:
        (context / folder).mkdir(parents=True, exist_ok=True)
    for name in case.files:
        (context / name).write_text(name + "\n")
    for name, text in case.ignore_files.items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_bytes(text.encode("utf-8"))
    if case.dockerfile_rel is None:
        dockerfile = root / "outside" / "Dockerfile"
    else:
        dockerfile = context / case.dockerfile_rel
    dockerfile.parent.mkdir(parents=True, exist_ok=True)
    dockerfile.write_text(DOCKERFILE)
    return context, dockerfile


def _tree(context: Path) -> tuple[set[str], set[str]]:
    files: set[str] = set()
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(context):
        rel = os.path.relpath(dirpath, context)
        prefix = "" if rel == "." else rel + "/"
        dirs.update(prefix + d for d in dirnames)
        files.update(prefix + f for f in filenames)
    return files, dirs


def _build(argv: list[str], env: dict[str, str], out: Path) -> Outcome:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        return Outcome(False, set(), set(), f"timed out: {exc}")
    log = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        return Outcome(False, set(), set(), log)
    files, dirs = _tree(out / "ctx")
    return Outcome(True, files, dirs, log)


class Engines:
    def __init__(self, testbed: Testbed, scratch: Path) -> None:
        self.docker_env = {**os.environ, "DOCKER_HOST": testbed.docker_host,
                           "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
        # A private buildah store: nothing of ours lands in (or is removed from)
        # the store other builds on this machine use.
        self.buildah_global = ["buildah", "--root", str(scratch / "buildah-root"),
                               "--runroot", str(scratch / "buildah-runroot"),
                               "--storage-driver", "vfs"]

    def docker(self, context: Path, dockerfile: Path, out: Path) -> Outcome:
        argv = [DOCKER, "build", "-q", "-f", str(dockerfile), "-o",
                f"type=local,dest={out}", str(context)]
        return _build(argv, self.docker_env, out)

    def buildah(self, context: Path, dockerfile: Path, out: Path) -> Outcome:
        argv = [*self.buildah_global, "bud", "-q", "--isolation", "chroot", "-f",
                str(dockerfile), "--output", f"type=local,dest={out}", str(context)]
        return _build(argv, dict(os.environ), out)


# -- the model ----------------------------------------------------------------

@dataclass
class Expected:
    error: str | None
    files: set[str]
    dirs: set[str]
    ignore: DockerIgnore
    ignore_file: str | None


def expected(engine: str, case: Case, context: Path, dockerfile: Path) -> Expected:
    dockerfile_rel = os.path.relpath(dockerfile, context).replace(os.sep, "/")
    name = ignore_file_for(engine, dockerfile_rel, lambda rel: (context / rel).is_file())
    text = (context / name).read_bytes().decode("utf-8") if name else ""
    ignore = DockerIgnore.parse(text, engine)
    tree_files, tree_dirs = _tree(context)
    files = {f for f in tree_files if not ignore.excluded(f)}
    dirs = {d for d in tree_dirs if not ignore.excluded(d, directory=True)}
    for entry in [*files, *dirs]:  # a parent of anything written exists too
        parts = entry.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return Expected(ignore.error, files, dirs, ignore, name)


def _compare(engine: str, case: Case, want: Expected, got: Outcome) -> list[str]:
    head = (f"{engine}: {case.describe()}\n  ignore file used: {want.ignore_file}, "
            f"patterns as parsed: {list(want.ignore.patterns)}")
    if want.error is not None or not got.ok:
        if want.error is not None and not got.ok:
            return []
        verdict = f"fails: {want.error}" if want.error else "works"
        return [f"{head}\n  model says the build {verdict}, the engine "
                f"{'built it' if got.ok else 'failed'}\n  engine log: {got.log}"]
    problems = []
    for kind, mine, theirs in (("file", want.files, got.files), ("dir", want.dirs, got.dirs)):
        for path in sorted(mine ^ theirs):
            problems.append(
                f"{head}\n  {kind} {path!r}: engine {'sent' if path in theirs else 'left out'}"
                f" it, DockerIgnore says {'sent' if path in mine else 'left out'}")
    return problems


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="orch-diff-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_all(cases: list[Case], scratch: Path,
             build: Callable[[Path, Path, Path], Outcome], name: str) -> list[Outcome]:
    def one(case: Case) -> Outcome:
        base = scratch / f"case{case.number:04d}"
        return build(base / "context", _dockerfile_path(case, base), base / f"out-{name}")

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, cases))


def _dockerfile_path(case: Case, base: Path) -> Path:
    if case.dockerfile_rel is None:
        return base / "outside" / "Dockerfile"
    return base / "context" / case.dockerfile_rel


@pytest.mark.timeout(900)  # ~2.5 min for 300 cases on 2 cores; leave room on a busy machine
def test_dockerignore_matches_the_engines(testbed: Testbed, scratch: Path) -> None:
    if shutil.which("buildah") is None or os.geteuid() != 0:
        pytest.skip("needs buildah, as root")
    engines = Engines(testbed, scratch)
    cases = make_cases(CASES, SEED)
    for case in cases:
        _write_case(case, scratch / f"case{case.number:04d}")
    with ThreadPoolExecutor(2) as pool:
        docker_run = pool.submit(_run_all, cases, scratch, engines.docker, "docker")
        buildah_run = pool.submit(_run_all, cases, scratch, engines.buildah, "buildah")
        results = {"docker": docker_run.result(), "buildah": buildah_run.result()}

    problems: list[str] = []
    disagreements: list[str] = []
    for i, case in enumerate(cases):
        base = scratch / f"case{case.number:04d}"
        context, dockerfile = base / "context", _dockerfile_path(case, base)
        for engine in ("docker", "buildah"):
            want = expected(engine, case, context, dockerfile)
            problems += _compare(engine, case, want, results[engine][i])
        d, b = results["docker"][i], results["buildah"][i]
        if (d.ok, d.files, d.dirs) != (b.ok, b.files, b.dirs):
            detail = ("only one engine built it" if d.ok != b.ok else
                      f"files only docker sent {sorted(d.files - b.files)}, only buildah "
                      f"{sorted(b.files - d.files)}; dirs only docker {sorted(d.dirs - b.dirs)},"
                      f" only buildah {sorted(b.dirs - d.dirs)}")
            disagreements.append(f"{case.describe()}\n  {detail}")
    print(f"\n{len(cases)} cases, seed {SEED}; the engines disagree on {len(disagreements)}:")
    for line in disagreements:
        print(line)
    failed_builds = sum(not r.ok for rs in results.values() for r in rs)
    print(f"{failed_builds} builds failed (as predicted unless reported below)")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n\n".join(problems[:40])
