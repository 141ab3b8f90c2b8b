"""Differential test: which base each stage really used, against what
``orchestrator.core.dockerfile`` pinned, on the real engines.

Marker images (busybox plus a file ``/id`` naming the image) are pushed twice
under each tag: the pins name the first push's digest, while the tag itself has
moved on to the second. A stage that an engine built on anything but the pinned
image shows it in ``/id``: a ``#v2`` marker is a moving tag pulled unpinned.

From a fixed seed, each case is a generated multi-stage Dockerfile: global ARGs
with defaults, build args (for declared and undeclared names), FROM lines that
name images literally, through ARGs, through ``${TARGETARCH}``, by earlier (or
later) stage names and indexes, over continuation lines with comments inside,
``--platform``; ``COPY --from`` and ``RUN --mount=…,from=`` naming images and
stages; heredocs with hyphenated terminators, some whose body holds an
instruction; ``# escape=`` (indented too), CRLF and a byte order mark. The final
stage copies what every stage saw into ``/got``.

The orchestrator's analysis of each case predicts the final stage's ``/id`` and
``/got`` files (or refuses the case). Each case is built with the pins the
orchestrator passes: buildah with the ``--build-context`` names
``BuildahBuilder.build_contexts`` gives, BuildKit (Docker 20.10's) from the
pinned copy ``DockerBuildKitBuilder.pinned_dockerfile`` writes. A build that
succeeds must match the prediction exactly; a build the analysis predicts
must succeed, unless it uses a heredoc (neither engine here has them).

``ORCH_DIFF_CASES`` sets the number of cases (default 100), ``ORCH_DIFF_SEED``
the seed, ``ORCH_DIFF_DUMP`` a JSON file for every case and outcome; run with
``-s`` to see the engines' disagreements. Refused cases are built on buildah
only (its store is private): the testbed's dockerd is shared, and Docker
20.10's frontend crashes the daemon on a stage cycle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.core.dockerfile import Analysis, ImageUse, analyze
from orchestrator.core.imageref import parse_reference
from orchestrator.engines.base import BuildRequest
from orchestrator.engines.buildah import BuildahBuilder
from orchestrator.engines.buildkit import DockerBuildKitBuilder
from tests.conftest import Testbed

pytestmark = [pytest.mark.integration, pytest.mark.long(2.5)]

DOCKER = "/usr/bin/docker"  # Debian's 20.10 CLI: honours DOCKER_BUILDKIT without buildx
CASES = int(os.environ.get("ORCH_DIFF_CASES", "100"))
SEED = int(os.environ.get("ORCH_DIFF_SEED", "20261208"))
DUMP = os.environ.get("ORCH_DIFF_DUMP")  # a file to write every case and outcome to
WORKERS = 3  # per engine; both engines run at the same time
NAMESPACE = "orch-test/dockerfile-diff"
IMAGES = ["a:1", "a:2", "b:1", "b:2", "c:2", "d:latest", "t-amd64:1"]


def marker(image: str, version: int) -> str:
    return f"{image}#v{version}"


# -- the marker images ----------------------------------------------------------


@dataclass
class Bases:
    registry: str  # "127.0.0.1:5000/orch-test/dockerfile-diff"
    pinned: dict[str, str]  # normalised reference -> repository@digest of the first push
    markers: dict[str, str]  # normalised reference -> what /id holds in the first push

    def pin_for(self, use: ImageUse) -> str:
        assert use.ref is not None
        return self.pinned[use.ref.normalized()]


def _run(argv: list[str], **kwargs: object) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return str(proc.stdout)


def make_bases(testbed: Testbed, scratch: Path) -> Bases:
    registry = f"{testbed.registry}/{NAMESPACE}"
    store = ["buildah", "--root", str(scratch / "make-root"), "--runroot",
             str(scratch / "make-runroot"), "--storage-driver", "vfs"]
    seed = f"{testbed.seed_image}:{testbed.seed_tag}"
    pinned: dict[str, str] = {}
    markers: dict[str, str] = {}
    for version in (1, 2):  # the second push moves every tag
        for image in IMAGES:
            ref = f"{registry}/{image}"
            container = _run([*store, "from", "--tls-verify=false", seed]).strip()
            (scratch / "id").write_text(marker(image, version) + "\n")
            _run([*store, "copy", container, str(scratch / "id"), "/id"])
            # A fixed time: the same bytes (and digests) on every run of the test.
            _run([*store, "commit", "-q", "--rm", "--timestamp", "0", container, ref])
            digest_file = scratch / "digest"
            _run([*store, "push", "--tls-verify=false", "--digestfile", str(digest_file), ref])
            if version == 1:
                key = parse_reference(ref).normalized()
                pinned[key] = f"{ref.rsplit(':', 1)[0]}@{digest_file.read_text().strip()}"
                markers[key] = marker(image, 1)
    return Bases(registry, pinned, markers)


# -- the cases ----------------------------------------------------------------------


@dataclass
class Case:
    number: int
    text: str
    build_args: dict[str, str]
    heredoc: bool = False  # uses a heredoc: the engines here have none
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        args = " ".join(f"--build-arg {k}={v}" for k, v in self.build_args.items())
        return f"case {self.number} {args}\n{self.text}"


# Ways to write an image in a FROM line, given the global ARGs every case declares:
#   ARG REG=<registry>  ARG TAG=1  ARG IMG=${REG}/b:${TAG}  ARG EMPTY=  ARG UNSET
FROM_IMAGES = [
    "{reg}/a:1", "{reg}/a:2", "{reg}/c:2", "{reg}/d", "{reg}/d:latest", "${{REG}}/a:1",
    "$REG/c:2", "${{IMG}}", "${{REG}}/a:${{TAG}}", "${{REG}}/b:$TAG", "${{REG}}/d${{EMPTY}}",
    "${{REG}}/c:${{UNSET:-2}}", "${{REG}}/a:${{V:-1}}", "${{REG}}/t-${{TARGETARCH}}:1",
    '"${{REG}}/b:1"', "${{REG}}/${{EMPTY:-a}}:1", "${{REG}}/a:${{TAG:+2}}",
]
COPY_IMAGES = ["{reg}/a:1", "{reg}/b:2", "{reg}/c:2", "{reg}/d", "{reg}/t-amd64:1"]
HEREDOC_BODIES = ["hello from a heredoc", "FROM {reg}/c:2", "FROM {reg}/b:1 AS s9",
                  "from os import path", "COPY --from={reg}/a:2 /id /got/x"]


def _split_from(rng: random.Random, words: list[str], escape: str) -> str:
    """A FROM line as one line, or continued over several (comments inside)."""
    if rng.random() < 0.8:
        return " ".join(words)
    out = words[0]
    for word in words[1:]:
        out += f" {escape}\n"
        if rng.random() < 0.3:
            out += "  # a comment inside the instruction\n"
        out += "  " + word
    return out


def make_case(number: int, rng: random.Random, registry: str) -> Case:
    escape = "`" if rng.random() < 0.12 else "\\"
    lines: list[str] = []
    if escape == "`":
        lines.append(("  " if rng.random() < 0.5 else "") + "# escape=`")
    lines += [f"ARG REG={registry}", "ARG TAG=1", "ARG IMG=${REG}/b:${TAG}", "ARG EMPTY=",
              "ARG UNSET"]
    build_args: dict[str, str] = {}
    if rng.random() < 0.3:
        build_args["TAG"] = "2"
    if rng.random() < 0.2:
        build_args["V"] = "2"  # undeclared: BuildKit ignores it, buildah uses it
    if rng.random() < 0.1:
        build_args["IMG"] = f"{registry}/c:2"
    case = Case(number, "", build_args)
    count = rng.randint(1, 4)
    names = [f"s{k}" if rng.random() < 0.97 else f"S{k}" for k in range(count)]
    rooted: list[bool] = []  # the stage has /id (not built on scratch)
    for k in range(count):
        roll = rng.random()
        flags = []
        if rng.random() < 0.12:
            flags.append(rng.choice(["--platform=$BUILDPLATFORM", "--platform=linux/amd64"]))
        if k and roll < 0.2:
            earlier = rng.randrange(k)
            # As BuildKit keys it (lower case), sometimes as written in AS.
            base, has_id = rng.choice([names[earlier].lower()] * 3 + [names[earlier]]), \
                rooted[earlier]
        elif roll < 0.25:
            base, has_id = "scratch", False
        elif k + 1 < count and roll < 0.26:
            base, has_id = names[k + 1].lower(), True  # a later stage: refused
        else:
            base, has_id = rng.choice(FROM_IMAGES).format(reg=registry), True
        words = ["FROM", *flags, base]
        if k + 1 < count or rng.random() < 0.5:
            words += [rng.choice(["AS", "as"]), names[k]]
        lines.append(_split_from(rng, words, escape))
        rooted.append(has_id)
        lines += _stage_body(rng, case, k, names, rooted, registry)
    lines += _final_collects(rng, names, rooted, count)
    end = "\r\n" if rng.random() < 0.08 else "\n"
    case.text = ("\ufeff" if rng.random() < 0.05 else "") + end.join(lines) + end
    return case


def _stage_body(rng: random.Random, case: Case, k: int, names: list[str], rooted: list[bool],
                registry: str) -> list[str]:
    out = [f"COPY --from={rng.choice(COPY_IMAGES).format(reg=registry)} /id /got/s{k}-c0"]
    for j in range(1, rng.randint(1, 3)):
        roll = rng.random()
        if k and roll < 0.3:
            earlier = rng.randrange(k)
            if not rooted[earlier]:
                continue
            source = rng.choice([names[earlier], names[earlier].upper(), str(earlier)])
        elif roll < 0.33 and k + 1 < len(names):
            source = names[k + 1]  # defined later: refused
        else:
            source = rng.choice(COPY_IMAGES).format(reg=registry)
        out.append(f"COPY --from={source} /id /got/s{k}-c{j}")
    if rooted[k] and rng.random() < 0.12:
        source = rng.choice(COPY_IMAGES).format(reg=registry)
        if k and rng.random() < 0.4 and rooted[k - 1]:
            source = names[k - 1]
        out.append(f"RUN --mount=type=bind,from={source},target=/m "
                   f"cp /m/id /got/s{k}-m")
    if rng.random() < 0.05:
        case.heredoc = True
        terminator = rng.choice(["END-OF-SCRIPT", "EOF", "E-1"])
        opening = rng.choice([f"<<{terminator}", f'<<"{terminator}"', f"<<-{terminator}"])
        body = rng.choice(HEREDOC_BODIES).format(reg=registry)
        out += [f"COPY {opening} /got/s{k}-h", body, terminator]
    return out


def _final_collects(rng: random.Random, names: list[str], rooted: list[bool],
                    count: int) -> list[str]:
    out = []
    for i in range(count - 1):
        source = rng.choice([names[i], str(i)])
        out.append(f"COPY --from={source} /got/ /got/")
        if rooted[i]:
            out.append(f"COPY --from={source} /id /got/s{i}-id")
    return out


def make_cases(count: int, seed: int, registry: str) -> list[Case]:
    rng = random.Random(seed)
    return [make_case(number, rng, registry) for number in range(count)]


# -- the prediction -----------------------------------------------------------------


@dataclass
class Prediction:
    refused: str | None  # why the orchestrator refuses the case
    files: dict[str, str]  # "id", "got/s0-c0" -> content
    pins: dict[str, str]


def predict(case: Case, bases: Bases) -> Prediction:
    analysis = analyze(case.text, case.build_args)
    problems = analysis.problems()
    if problems:
        return Prediction("; ".join(problems), {}, {})
    outside = [u.resolved for u in analysis.image_uses()
               if u.ref is not None and u.ref.normalized() not in bases.pinned]
    if outside:  # the orchestrator would resolve it on Docker Hub: not here
        return Prediction(f"names images outside the test's registry: {outside}", {}, {})
    pins = {use.resolved: bases.pin_for(use) for use in analysis.image_uses()
            if use.ref is not None and use.resolved is not None}
    trees: list[dict[str, str]] = []
    for index, stage in enumerate(analysis.stages):
        base = stage.base
        if base.stage is not None:
            tree = dict(trees[base.stage])
        elif base.scratch:
            tree = {}
        else:
            assert base.ref is not None
            tree = {"id": bases.markers[base.ref.normalized()] + "\n"}
        end = analysis.stages[index + 1].line if index + 1 < len(analysis.stages) else 10**9
        for ins in analysis.instructions:
            if stage.line < ins.line < end:
                _apply(analysis, ins.line, ins.keyword, ins.args, ins.heredocs, tree, trees,
                       bases)
        trees.append(tree)
    final = trees[-1]
    return Prediction(None, {k: v for k, v in final.items()
                             if k == "id" or k.startswith("got/")}, pins)


def _source(analysis: Analysis, line: int, trees: list[dict[str, str]],
            bases: Bases) -> dict[str, str]:
    for use in analysis.links:
        if use.line == line:
            assert use.stage is not None
            return trees[use.stage]
    for use in analysis.uses:
        if use.line == line:
            assert use.ref is not None
            return {"id": bases.markers[use.ref.normalized()] + "\n"}
    raise AssertionError(f"line {line}: no source")


def _apply(analysis: Analysis, line: int, keyword: str, args: tuple[str, ...],
           heredocs: tuple[object, ...], tree: dict[str, str], trees: list[dict[str, str]],
           bases: Bases) -> None:
    if keyword == "COPY" and heredocs:
        content = getattr(heredocs[0], "content")  # noqa: B009
        tree[args[-1].lstrip("/")] = content
    elif keyword == "COPY":
        source = _source(analysis, line, trees, bases)
        src, dst = args[0].lstrip("/"), args[1].lstrip("/")
        if src == "id":
            if "id" not in source:
                raise _Fails(f"line {line}: /id is not in the source")
            tree[dst] = source["id"]
        else:  # /got/ into /got/
            tree.update({k: v for k, v in source.items() if k.startswith("got/")})
    elif keyword == "RUN":
        source = _source(analysis, line, trees, bases)
        tree[args[-1].split()[-1].lstrip("/")] = source["id"]


class _Fails(Exception):
    pass


# -- building ----------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    files: dict[str, str]
    log: str


def _read_tree(out: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    if (out / "id").is_file():
        files["id"] = (out / "id").read_text()
    got = out / "got"
    if got.is_dir():
        for path in sorted(got.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(out))] = path.read_text()
    return files


def _build(argv: list[str], env: dict[str, str], out: Path) -> Outcome:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        return Outcome(False, {}, f"timed out: {exc}")
    log = (proc.stdout + proc.stderr)[-2000:]
    if proc.returncode != 0:
        return Outcome(False, {}, log)
    return Outcome(True, _read_tree(out), log)


def _request(folder: Path, case: Case, pins: dict[str, str]) -> BuildRequest:
    return BuildRequest(layer=f"case{case.number}", context=folder / "context",
                        dockerfile=folder / "Dockerfile", args=case.build_args, labels={},
                        tags=("unused",), push=False, log_path=folder / "log", timeout_s=180,
                        from_pins=pins)


class Engines:
    def __init__(self, testbed: Testbed, scratch: Path) -> None:
        self.docker_env = {**os.environ, "DOCKER_HOST": testbed.docker_host,
                           "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
        # A private buildah store: nothing of ours lands in (or is removed from)
        # the store other builds on this machine use.
        self.buildah_global = ["buildah", "--root", str(scratch / "buildah-root"),
                               "--runroot", str(scratch / "buildah-runroot"),
                               "--storage-driver", "vfs"]

    @staticmethod
    def _build_args(case: Case) -> list[str]:
        return [word for k, v in case.build_args.items() for word in ("--build-arg", f"{k}={v}")]

    def docker(self, folder: Path, case: Case, pins: dict[str, str] | None) -> Outcome:
        if pins is None:
            # Refused cases never reach an engine in service, and the testbed's
            # dockerd is shared: Docker 20.10's frontend dies of a stack overflow
            # on a stage cycle (COPY --from a later stage that builds on this one).
            return Outcome(False, {}, "not built: refused")
        request = _request(folder, case, pins)
        pinned_folder = folder / "docker-pinned"
        pinned_folder.mkdir(exist_ok=True)
        dockerfile = DockerBuildKitBuilder.pinned_dockerfile(request, pinned_folder) or \
            request.dockerfile
        out = folder / "out-docker"
        argv = [DOCKER, "build", "-q", *self._build_args(case), "-f", str(dockerfile),
                "-o", f"type=local,dest={out}", str(request.context)]
        return _build(argv, self.docker_env, out)

    def buildah(self, folder: Path, case: Case, pins: dict[str, str] | None) -> Outcome:
        request = _request(folder, case, pins or {})
        contexts = BuildahBuilder.build_contexts(request)
        out = folder / "out-buildah"
        argv = [*self.buildah_global, "bud", "-q", "--isolation", "chroot",
                "--tls-verify=false", *self._build_args(case),
                *(w for name, pinned in sorted(contexts.items())
                  for w in ("--build-context", f"{name}=docker-image://{pinned}")),
                "-f", str(request.dockerfile), "--output", f"type=local,dest={out}",
                str(request.context)]
        return _build(argv, dict(os.environ), out)


# -- the test ----------------------------------------------------------------------


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="orch-dfdiff-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _docker_forget(testbed: Testbed, registry: str) -> None:
    """The marker images the engine pulled leave its store again."""
    env = {**os.environ, "DOCKER_HOST": testbed.docker_host}
    out = subprocess.run([DOCKER, "images", "--format", "{{.ID}} {{.Repository}}"],
                         capture_output=True, text=True, env=env, check=False).stdout
    ids = sorted({line.split()[0] for line in out.splitlines()
                  if line.split()[1:] and line.split()[1].startswith(registry)})
    if ids:
        subprocess.run([DOCKER, "rmi", "--force", *ids], capture_output=True, env=env,
                       check=False)


def _compare(engine: str, case: Case, want: Prediction, got: Outcome,
             fails: str | None) -> list[str]:
    head = f"{engine}: {case.describe()}"
    if want.refused is not None:
        return []
    if fails is not None:
        if got.ok:
            return [f"{head}\n  predicted to fail ({fails}), but the engine built it: "
                    f"{got.files}"]
        return []
    if not got.ok:
        if case.heredoc:
            return []  # neither engine here has heredocs; reported, not failed
        return [f"{head}\n  predicted {want.files}\n  the engine failed: {got.log}"]
    if got.files != want.files:
        wrong = {k: (want.files.get(k), got.files.get(k))
                 for k in sorted(set(want.files) | set(got.files))
                 if want.files.get(k) != got.files.get(k)}
        return [f"{head}\n  pins: {want.pins}\n  (predicted, built) differ: {wrong}"]
    return []


@pytest.mark.timeout(900)
def test_pinned_bases_are_what_the_engines_build_on(testbed: Testbed, scratch: Path) -> None:
    if shutil.which("buildah") is None or os.geteuid() != 0:
        pytest.skip("needs buildah, as root")
    started = time.monotonic()
    bases = make_bases(testbed, scratch)
    print(f"\nmarker images pushed in {time.monotonic() - started:.0f} s")
    engines = Engines(testbed, scratch)
    cases = make_cases(CASES, SEED, bases.registry)
    predictions: list[tuple[Prediction, str | None]] = []
    for case in cases:
        folder = scratch / f"case{case.number:04d}"
        (folder / "context").mkdir(parents=True)
        (folder / "Dockerfile").write_bytes(case.text.encode())
        try:
            predictions.append((predict(case, bases), None))
        except _Fails as exc:
            predictions.append((Prediction(None, {}, {}), str(exc)))

    def run_all(build: Callable[[Path, Case, dict[str, str] | None], Outcome]
                ) -> list[Outcome]:
        def one(index: int) -> Outcome:
            case, (want, _) = cases[index], predictions[index]
            return build(scratch / f"case{case.number:04d}", case,
                         None if want.refused else want.pins)

        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(one, range(len(cases))))

    try:
        with ThreadPoolExecutor(2) as pool:
            docker_run = pool.submit(run_all, engines.docker)
            buildah_run = pool.submit(run_all, engines.buildah)
            results = {"docker": docker_run.result(), "buildah": buildah_run.result()}
    finally:
        _docker_forget(testbed, bases.registry)

    problems: list[str] = []
    report: dict[str, int] = {}
    for index, case in enumerate(cases):
        want, fails = predictions[index]
        for engine in ("docker", "buildah"):
            got = results[engine][index]
            problems += _compare(engine, case, want, got, fails)
            verdict = ("refused" if want.refused else "fails" if fails else "builds")
            if want.refused and engine == "docker":
                continue
            key = f"{engine}: orchestrator {verdict}, engine {'built' if got.ok else 'failed'}"
            report[key] = report.get(key, 0) + 1
        d, b = results["docker"][index], results["buildah"][index]
        if not want.refused and (d.ok, d.files) != (b.ok, b.files):
            print(f"\nengines disagree on {case.describe()}\n"
                  f"  docker: {d.files if d.ok else d.log[-400:]}\n"
                  f"  buildah: {b.files if b.ok else b.log[-400:]}")
        if want.refused and b.ok:
            print(f"\nrefused ({want.refused[:200]}), buildah built: {case.describe()}\n"
                  f"  buildah: {b.files}")
    if DUMP:
        Path(DUMP).write_text(json.dumps([{
            "case": case.describe(), "refused": want.refused, "fails": fails,
            "predicted": want.files, **{engine: {"ok": results[engine][i].ok,
                                                 "files": results[engine][i].files,
                                                 "log": results[engine][i].log}
                                        for engine in ("docker", "buildah")}}
            for i, (case, (want, fails)) in enumerate(zip(cases, predictions, strict=True))],
            indent=1))
    print(f"\n{len(cases)} cases, seed {SEED}, {time.monotonic() - started:.0f} s:")
    for key, count in sorted(report.items()):
        print(f"  {count:4d}  {key}")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n\n".join(problems[:20])
