"""What images a Dockerfile's build uses: stages, ARG expansion, ``--from``. Pure.

On top of BuildKit's parser (:mod:`.syntax`), this follows the rules of
BuildKit's ``dockerfile2llb`` for everything that decides which image a
build pulls:

- the *global* ARGs (those before the first FROM) with their defaults, each
  default expanded over the ARGs before it, a build arg replacing the default
  of an ARG that is declared; the platform ARGs (``TARGETARCH``,
  ``BUILDPLATFORM``, …) defined without a declaration, from the platform the
  build targets;
- each ``FROM [--platform=…] IMAGE [AS NAME]`` with IMAGE expanded over the
  global ARGs; IMAGE names an *earlier* stage when it equals that stage's
  (lower-cased) name, ``scratch`` is no image;
- ``COPY --from=…`` names a stage by name (any case) or index, else an image;
  ``RUN --mount=…,from=…`` names a stage by name, else an image.

Where the engines this project drives read a Dockerfile differently, the
analysis refuses it (a ``problem``, or a note) rather than guess which engine
will build it: a ``--from`` naming a stage defined *later* (BuildKit uses the
stage, buildah pulls an image of that name), a stage index that is not an
earlier stage, a variable in ``--from`` (BuildKit refuses it, buildah expands
it), an image name that is also a stage name (named build contexts replace the
stage), a FROM whose variable has no value (BuildKit drops it, which silently
changes the image), and a heredoc body line that an engine without heredocs
would run as an image-using instruction.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

from orchestrator.core.dockerfile.syntax import (
    DockerfileError,
    Instruction,
    directives,
    escape_of,
    parse,
)
from orchestrator.core.dockerfile.words import WordError, expand, unquote
from orchestrator.core.imageref import Reference, parse_reference
from orchestrator.core.platforms import split as split_platform

SCRATCH = "scratch"
DEFAULT_PLATFORM = "linux/amd64"
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
_INDEX = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi takes

Kind = Literal["FROM", "COPY", "RUN"]


@dataclass(frozen=True)
class ImageUse:
    """One place a Dockerfile names an image, a stage, or scratch.

    Exactly one of ``ref``, ``stage``, ``scratch`` or ``problem`` tells what
    it is.
    """

    line: int  # where the instruction starts
    instruction: Kind
    written: str  # as in the file: "${BASE}:3.12", "golang:1.22"
    resolved: str | None  # after ARG substitution; None when that failed
    ref: Reference | None = None
    stage: int | None = None  # index of the stage it names
    scratch: bool = False
    problem: str | None = None
    # The ARGs its value came from, directly or through other ARGs' defaults.
    args: frozenset[str] = frozenset()

    @property
    def external(self) -> bool:
        return self.ref is not None


@dataclass(frozen=True)
class Stage:
    index: int
    line: int
    base: ImageUse  # the FROM image
    platform: str | None  # the --platform= value as written
    name: str | None  # the AS name, lower-cased as BuildKit keys it

    @property
    def image(self) -> str:
        return self.base.written

    @property
    def ref(self) -> Reference | None:
        return self.base.ref


@dataclass(frozen=True)
class Analysis:
    stages: tuple[Stage, ...]
    # COPY --from / RUN --mount from= values that are not stages (images, or problems).
    uses: tuple[ImageUse, ...]
    args: Mapping[str, str | None]  # declared global ARGs after overrides; None = no value
    labels: tuple[tuple[str, str], ...]  # LABELs of the final stage, unquoted, unexpanded
    notes: tuple[str, ...] = ()  # what stops the engine before any image is used
    escape: str = "\\"
    instructions: tuple[Instruction, ...] = ()
    links: tuple[ImageUse, ...] = ()  # COPY --from / RUN --mount from= that name earlier stages

    @property
    def final(self) -> Stage | None:
        return self.stages[-1] if self.stages else None

    def root_of(self, stage: Stage) -> Stage:
        """The stage, or the first stage it builds on through ``FROM <stage>``."""
        while stage.base.stage is not None:
            stage = self.stages[stage.base.stage]
        return stage

    def from_refs(self) -> list[Reference]:
        """Distinct external images of the FROM lines, in order."""
        return _distinct(s.base.ref for s in self.stages)

    def external_refs(self) -> list[Reference]:
        """Distinct external images of FROM lines, then of COPY/RUN uses."""
        return _distinct([*(s.base.ref for s in self.stages), *(u.ref for u in self.uses)])

    def image_uses(self) -> list[ImageUse]:
        """Every FROM, then every COPY/RUN use, in file order within each."""
        return [*(s.base for s in self.stages), *self.uses]

    def problems(self) -> list[str]:
        return [*self.notes,
                *(f"line {u.line}: {u.problem}" for u in self.image_uses() if u.problem)]


def _distinct(refs: Iterable[Reference | None]) -> list[Reference]:
    seen: dict[str, Reference] = {}
    for ref in refs:
        if ref is not None:
            seen.setdefault(ref.normalized(), ref)
    return list(seen.values())


# -- the ARGs a FROM line sees ---------------------------------------------------------------


def platform_args(target: str, build: str | None = None) -> dict[str, str]:
    """The ARGs BuildKit defines by itself (its ``defaultArgs``), for a build
    targeting ``target`` on ``build`` (default: the target)."""
    out: dict[str, str] = {}
    for prefix, platform in (("BUILD", build or target), ("TARGET", target)):
        os_name, arch, variant = split_platform(platform)
        out |= {f"{prefix}PLATFORM": platform, f"{prefix}OS": os_name,
                f"{prefix}OSVERSION": "", f"{prefix}ARCH": arch,
                f"{prefix}VARIANT": variant or ""}
    return out


def _global_args(instructions: list[Instruction], escape: str, build_args: Mapping[str, str],
                 automatic: Mapping[str, str]) -> _Globals:
    env = {k: build_args.get(k, v) for k, v in automatic.items()}
    globals_ = _Globals(env, {}, {}, [])
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword != "ARG":
            continue
        for word in ins.args:
            name, eq, default = word.partition("=")
            globals_.deps[name] = frozenset()
            if name in build_args:
                env[name] = build_args[name]
            elif eq:
                try:
                    expansion = expand(default, env, escape)
                except WordError as exc:
                    globals_.notes.append(f"line {ins.line}: ARG {name}: {exc}")
                    env.pop(name, None)
                else:
                    env[name] = expansion.value
                    globals_.deps[name] = globals_.closure(expansion.used)
            globals_.declared[name] = env.get(name)
    return globals_


@dataclass
class _Globals:
    env: dict[str, str]  # what a FROM line sees
    declared: dict[str, str | None]
    deps: dict[str, frozenset[str]]  # ARG -> the ARGs its default was made of
    notes: list[str]

    def closure(self, names: Iterable[str]) -> frozenset[str]:
        out = set(names)
        for name in names:
            out |= self.deps.get(name, frozenset())
        return frozenset(out)


# -- analysis --------------------------------------------------------------------------------


def analyze(text: str, build_args: Mapping[str, str] | None = None, *,
            platform: str | None = None, build_platform: str | None = None) -> Analysis:
    """Stages, image uses, global ARGs and final-stage LABELs of a Dockerfile,
    for a build with ``build_args`` targeting ``platform`` (default linux/amd64)."""
    return _analyze(text, frozenset((build_args or {}).items()), platform or DEFAULT_PLATFORM,
                    build_platform)


# Kept: a catalog's layers are analysed when it loads and again for each build,
# most with the args they had then; matrix variants share a text.
@functools.lru_cache(maxsize=1024)
def _analyze(text: str, build_args: frozenset[tuple[str, str]], platform: str,
             build_platform: str | None) -> Analysis:
    try:
        instructions = parse(text)
    except DockerfileError as exc:
        return Analysis((), (), {}, (), (f"the engine cannot parse it: {exc}",))
    escape = escape_of(text)
    args = dict(build_args)
    froms = [ins for ins in instructions if ins.keyword == "FROM"]
    names = [_stage_name(ins) for ins in froms]
    final_name = names[-1][0] if names and names[-1][0] else "default"
    automatic = {**platform_args(platform, build_platform),
                 "TARGETSTAGE": final_name}
    globals_ = _global_args(instructions, escape, args, automatic)
    notes = globals_.notes
    stage_index = {name: i for i, (name, _) in enumerate(names) if name}

    stages: list[Stage] = []
    uses: list[ImageUse] = []
    labels: list[tuple[str, str]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            name, problem = names[len(stages)]
            stages.append(_stage(ins, len(stages), name, problem, globals_, escape,
                                 stage_index))
            labels = []
        elif not stages:
            if ins.keyword != "ARG":
                notes.append(f"line {ins.line}: {ins.keyword} before the first FROM")
        elif ins.keyword == "COPY":
            uses += _copy_uses(ins, len(stages) - 1, escape, stage_index)
        elif ins.keyword == "RUN":
            uses += _mount_uses(ins, len(stages) - 1, stage_index)
        elif ins.keyword == "LABEL":
            labels += [(unquote(k, escape), unquote(v, escape))
                       for k, v in zip(ins.args[0::2], ins.args[1::2], strict=False)]
    notes += _heredoc_traps(instructions)
    notes += _frontend_by_tag(text, args)
    notes += _after_check(text)
    notes += _onbuild_images(instructions)
    if not stages and not notes:
        notes.append("no FROM instruction")
    stages = [replace(s, base=_check_collision(s.base, stage_index)) for s in stages]
    links = [u for u in uses if u.stage is not None]
    uses = [_check_collision(u, stage_index) for u in uses if u.stage is None]
    return Analysis(tuple(stages), tuple(uses), MappingProxyType(globals_.declared),
                    tuple(labels), tuple(notes), escape, tuple(instructions), tuple(links))


def _stage_name(ins: Instruction) -> tuple[str | None, str | None]:
    words = ins.args
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            return None, (f"invalid name for build stage: {words[2]!r}, name can't start with "
                          "a number or contain symbols")
        if name != words[2]:
            # BuildKit keys stages by the lower-cased name, buildah by the name as
            # written: "FROM s0" after "AS S0" is a stage to one, an image to the other.
            return name, (f"stage name {words[2]!r}: BuildKit lower-cases stage names and "
                          "buildah does not, so the engines resolve references to it "
                          f"differently; write it as {name!r}")
        return name, None
    if len(words) != 1:
        return None, "FROM requires either one or three arguments"
    return None, None


def _stage(ins: Instruction, index: int, name: str | None, problem: str | None,
           globals_: _Globals, escape: str, stage_index: Mapping[str, int]) -> Stage:
    platform: str | None = None
    for flag in ins.flags:
        key, eq, value = flag[2:].partition("=")
        if key == "platform" and eq:
            platform = value
        else:
            problem = problem or f"unknown flag: {flag}"
    written = ins.args[0] if ins.args else ""
    use = ImageUse(ins.line, "FROM", written, None)
    if not written:
        return Stage(index, ins.line, replace(use, problem="FROM names no image"), platform, name)
    try:
        expansion = expand(written, globals_.env, escape)
    except WordError as exc:
        return Stage(index, ins.line, replace(use, problem=f"{written}: {exc}"), platform, name)
    value = expansion.value
    use = replace(use, resolved=value, args=globals_.closure(expansion.used))
    if expansion.missing:
        missing = ", ".join(expansion.missing)
        use = replace(use, resolved=None, problem=f"{written!r}: no value for {missing} "
                      "(declare it with ARG "
                      "before the first FROM, with a default or a build arg)")
    elif problem:
        use = replace(use, problem=problem)
    elif not value:
        use = replace(use, problem=f"base name ({written}) should not be blank")
    elif stage_index.get(value, index) < index:
        use = replace(use, stage=stage_index[value])  # exact: BuildKit keys names lower-case
    elif value == SCRATCH:
        use = replace(use, scratch=True)
    else:
        use = _image(use, value)
    return Stage(index, ins.line, use, platform, name)


def _image(use: ImageUse, value: str) -> ImageUse:
    try:
        return replace(use, ref=parse_reference(value))
    except ValueError as exc:
        return replace(use, problem=str(exc))


def _copy_uses(ins: Instruction, current: int, escape: str,
               stage_index: Mapping[str, int]) -> list[ImageUse]:
    out: list[ImageUse] = []
    for value in ins.flag("from"):
        use = ImageUse(ins.line, "COPY", value or "", value)
        if value is None:
            out.append(replace(use, problem="missing a value on flag: --from"))
            continue
        if not value:
            continue  # --from= is no --from
        try:
            plain = expand(value, {}, escape).value == value
        except WordError:
            plain = False
        if not plain:
            out.append(replace(use, problem=f"--from={value}: variables are expanded by buildah "
                               "and refused by BuildKit; name a stage whose FROM uses the ARG"))
            continue
        if _INDEX.fullmatch(value):
            number = int(value)
            if 0 <= number < current:
                out.append(replace(use, stage=number))
                continue
            out.append(replace(use, problem=f"--from={value}: stage {number} is not an earlier "
                               "stage"))
            continue
        out += _stage_or_image(use, value.lower(), current, stage_index)
    return out


def _stage_or_image(use: ImageUse, key: str, current: int,
                    stage_index: Mapping[str, int]) -> list[ImageUse]:
    found = stage_index.get(key)
    if found is None:
        return [_image(use, use.written)]
    if found < current and use.written != key:
        return [replace(use, problem=f"{use.written} names stage {key!r} in another case: "
                        "BuildKit matches it, buildah reads an image name; write "
                        f"{key!r}")]
    if found < current:
        return [replace(use, stage=found)]
    where = "itself" if found == current else "a stage defined after this line"
    return [replace(use, stage=None, problem=f"{use.written} names {where}: BuildKit builds "
                    "that stage first, buildah reads the name as an image; define the stage "
                    "before this line")]


def _mount_uses(ins: Instruction, current: int,
                stage_index: Mapping[str, int]) -> list[ImageUse]:
    out: list[ImageUse] = []
    for value in ins.flag("mount"):
        for field in next(csv.reader([value or ""]), []):
            key, eq, found = field.partition("=")
            if key.lower() != "from" or not eq:
                continue
            use = ImageUse(ins.line, "RUN", found, found)
            if "$" in found[:-1]:
                out.append(replace(use, problem=f"from={found}: variables are not supported "
                                   "here; name a stage whose FROM uses the ARG"))
                continue
            out += _stage_or_image(use, found.lower(), current, stage_index)
    return out


def _frontend_by_tag(text: str, build_args: Mapping[str, str]) -> list[str]:
    """BuildKit hands a Dockerfile with a ``# syntax=IMAGE`` directive (or the
    BUILDKIT_SYNTAX build arg, which wins) to that frontend image, pulled by
    its name when the build runs: pinned by digest it is in the key through
    the Dockerfile's bytes (or the args), by a tag it is an unpinned input."""
    if "BUILDKIT_SYNTAX" in build_args:
        where, image = "the build arg BUILDKIT_SYNTAX", build_args["BUILDKIT_SYNTAX"]
    elif "syntax" in directives(text):
        line, image = directives(text)["syntax"]
        where = f"line {line}: # syntax={image}"
    else:
        return []
    if "@sha256:" in image:
        return []
    return [f"{where}: BuildKit builds through this frontend image, pulled by its tag "
            "when the build runs, so nothing pins it and the build key does not cover "
            f"it; pin it by digest (# syntax={image.split('@')[0]}@sha256:…) or remove it"]


def _after_check(text: str) -> list[str]:
    """``# check=`` is a directive to BuildKit 0.14 and later only; older parsers
    (Docker 20.10's, buildah's, the one under this analysis) stop at it, so a
    directive below it (``escape``: which lines continue; ``syntax``: the
    frontend) is read by some engines and not others."""
    found = directives(text)
    if "check" not in found:
        return []
    line = found["check"][0]
    later = sorted((n, name) for name, (n, _) in found.items() if n > line)
    if not later:
        return []
    return [f"line {n}: the {name} directive comes after the check directive on line "
            f"{line}: BuildKit 0.14 and later read it, older engines (Docker 20.10, "
            "buildah) take it for a comment and read the file differently; put "
            "# check= last among the directives" for n, name in later]


def _onbuild_images(instructions: list[Instruction]) -> list[str]:
    """ONBUILD triggers that name an image (``--from``, a mount's ``from=``): they
    run in the build of each image made FROM this one, which pulls that image by
    its name, pinned by nothing and in no key. (BuildKit's parser keeps no flags
    for a trigger: they are read from its text.)"""
    out: list[str] = []
    for ins in instructions:
        words = ins.text.split()[1:] if ins.keyword == "ONBUILD" else []
        if words and words[0].upper() != "FROM" and _uses_an_image(words[0].upper(),
                                                                   words[1:]):
            out.append(f"line {ins.line}: ONBUILD {words[0].upper()} names an image or "
                       "stage with --from/from=: the trigger runs in the builds of the "
                       "images made FROM this one, where nothing pins it; do that step "
                       "in those Dockerfiles instead")
    return out


def _heredoc_traps(instructions: list[Instruction]) -> list[str]:
    """Heredoc body lines an engine without heredocs would take for an instruction
    that uses an image. Docker 20.10's BuildKit and buildah before 1.33 read each
    body line as an instruction: a ``FROM x`` there is a stage to them, built on
    an image nothing pinned."""
    out: list[str] = []
    for ins in instructions:
        for doc in ins.heredocs:
            for line in doc.content.splitlines():
                words = line.split()
                if words and _uses_an_image(words[0].upper(), words[1:]):
                    out.append(f"line {ins.line}: the heredoc <<{doc.name} has the line "
                               f"{line.strip()!r}, which engines without heredoc support "
                               "(Docker 20.10, buildah before 1.33) read as an instruction "
                               "using an image nothing pins; write that line another way")
    return out


def _uses_an_image(keyword: str, words: list[str]) -> bool:
    if keyword == "FROM":
        rest = [w for w in words if not w.startswith("--")]
        return len(rest) == 1 or (len(rest) == 3 and rest[1].lower() == "as")
    if keyword in ("COPY", "ADD"):
        return any(w.lower().startswith("--from=") for w in words)
    if keyword == "RUN":
        return any(w.lower().startswith("--mount=") and "from=" in w.lower() for w in words)
    return False


def _check_collision(use: ImageUse, stage_index: Mapping[str, int]) -> ImageUse:
    """An image whose name is also a stage's: buildah's ``--build-context`` and
    BuildKit's named contexts are looked up by that name for the stage too, so
    pinning the image would replace the stage."""
    if use.ref is None or use.resolved is None:
        return use
    short = use.ref.familiar().removesuffix(":latest")
    for key in (use.resolved.lower(), short):
        if key in stage_index:
            return replace(use, ref=None, problem=(
                f"{use.resolved} is also the name of a build stage (AS {key}): the engines' "
                "named build contexts would replace that stage with the pinned image; "
                "rename the stage"))
    return use
