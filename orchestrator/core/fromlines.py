"""What images a Dockerfile builds on, and a copy of it pinned by digest. Pure.

:func:`analyze` reads a Dockerfile the way Docker's parser does, as far as
image references go:

- parser directives at the very top (``# escape=`` changes the escape and
  line-continuation character; the first line that is not a directive ends
  them), a leading byte order mark, ``\\r\\n`` line ends;
- line continuations, with comment lines and blank lines inside a continued
  instruction skipped (Docker skips both), and the continued lines joined
  without an added space, as Docker joins them;
- every ``FROM [--platform=…] image [AS name]``, with the image after
  substituting the *global* ARGs (those before the first FROM, with their
  defaults, overridden by build args passed in): ``$VAR``, ``${VAR}``,
  ``${VAR:-word}``, ``${VAR-word}``, ``${VAR:+word}``, ``${VAR+word}``,
  ``${VAR:?…}``, single and double quotes, the escape character;
- whether that image names an earlier stage (stage names compare
  case-insensitively, as BuildKit lower-cases them) or ``scratch``;
- ``COPY --from=…`` and ``RUN --mount=…,from=…`` values that name images
  rather than stages or stage numbers.

Out of scope: heredoc *contents* (``RUN <<EOF`` … ``EOF``). Their bodies are
skipped so that a body line starting with "FROM" is not taken for an
instruction, and a note says so, but nothing in them is analysed. A
``--from``/``from=`` value with a variable in it is reported, not resolved
(its value depends on stage-local ARGs).

:func:`pin` rewrites exactly the image words that name given references to
``repo@sha256:…`` and leaves every other byte, so line numbers hold. The copy
is what an engine is given with ``-f``; the user's file is never edited.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from orchestrator.core import dockerfile as df
from orchestrator.core.imageref import Reference, parse_reference

SCRATCH = "scratch"
# BuildKit defines these in the global scope by itself, so a FROM may use them
# without declaring them (``FROM --platform=$BUILDPLATFORM …``).
AUTOMATIC_ARGS = frozenset({
    "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
    "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
})
_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*")
# Unknown directives are comments to Docker, and end the directive section.
_KNOWN_DIRECTIVES = {"syntax", "escape", "check"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_BASE_IMAGE_VAR = re.compile(r"\$(?:\{BASE_IMAGE(?:[:?+\-}])|BASE_IMAGE\b)")


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Where a word sits in the text: 1-based line, 0-based columns ``[start, end)``."""

    line: int
    start: int
    end: int


@dataclass(frozen=True)
class ImageUse:
    """One place a Dockerfile names an image, a stage, or scratch.

    Exactly one of ``ref``, ``stage``, ``scratch`` or ``problem`` tells what
    it is. ``span`` is None when the word runs over a line continuation
    (such a word cannot be pinned in place).
    """

    line: int  # where the instruction starts
    instruction: Literal["FROM", "COPY", "RUN"]
    written: str  # as in the file: "${BASE}:3.12", "golang:1.22"
    resolved: str | None  # after ARG substitution; None when that failed
    ref: Reference | None = None
    stage: int | None = None  # index of the earlier stage it names
    scratch: bool = False
    problem: str | None = None
    span: Span | None = None

    @property
    def external(self) -> bool:
        return self.ref is not None


@dataclass(frozen=True)
class Stage:
    index: int
    line: int
    base: ImageUse  # the FROM image
    platform: str | None  # the --platform= value as written
    name: str | None  # the AS name as written

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
    args: Mapping[str, str | None]  # global ARGs after overrides; None = no value
    labels: tuple[tuple[str, str], ...]  # LABELs of the final stage, unquoted, unexpanded
    notes: tuple[str, ...] = ()  # what was not analysed, with line numbers

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
        return [f"line {u.line}: {u.problem}" for u in self.image_uses() if u.problem]


def _distinct(refs: Iterable[Reference | None]) -> list[Reference]:
    seen: dict[str, Reference] = {}
    for ref in refs:
        if ref is not None:
            seen.setdefault(ref.normalized(), ref)
    return list(seen.values())


# -- reading instructions ------------------------------------------------------------------


@dataclass
class _Instruction:
    line: int  # 1-based
    keyword: str
    text: str  # the logical instruction, continuations joined
    # Each physical piece joined into text: (offset in text, 0-based line, column).
    pieces: list[tuple[int, int, int]]
    words: list[tuple[str, int, int]] = field(default_factory=list)  # raw, start, end

    def span(self, start: int, end: int) -> Span | None:
        """Where text[start:end] is in the file: None unless it lies on one line
        (in one piece of a continued instruction)."""
        if start >= end:
            return None
        for number, (offset, line, column) in enumerate(self.pieces):
            piece_end = self.pieces[number + 1][0] if number + 1 < len(self.pieces) \
                else len(self.text)
            if offset <= start < piece_end:
                if end > piece_end:
                    return None
                first = column + start - offset
                return Span(line + 1, first, first + end - start)
        return None


def _lines(text: str) -> list[str]:
    """Physical lines as Docker splits them: on "\\n", with a trailing "\\r" dropped."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _read(text: str) -> tuple[list[_Instruction], str, list[str]]:
    lines = _lines(text)
    bom = 1 if lines and lines[0].startswith("\ufeff") else 0
    escape = "\\"
    index = 0
    while index < len(lines):
        match = _DIRECTIVE.fullmatch(lines[index][bom if index == 0 else 0:])
        if not match or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
        index += 1
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")

    out: list[_Instruction] = []
    notes: list[str] = []
    while index < len(lines):
        skip = bom if index == 0 else 0
        raw = lines[index]
        content = raw[skip:]
        stripped = content.strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        lead = len(content) - len(content.lstrip())
        chars: list[str] = []
        pieces: list[tuple[int, int, int]] = []
        length = 0
        start_line = index
        column = skip + lead
        piece = content[lead:]
        while True:
            cut = continuation.search(piece)
            body = piece[: cut.start()] if cut else piece
            if body:
                chars.append(body)
                pieces.append((length, index, column))
                length += len(body)
            index += 1
            if not cut:
                break
            # Continued: comment and blank lines are skipped, not joined.
            while index < len(lines) and (not lines[index].strip()
                                          or lines[index].lstrip().startswith("#")):
                index += 1
            if index >= len(lines):
                break
            piece, column = lines[index], 0
        logical = "".join(chars)
        words = _words(logical, escape)
        if not words:
            continue
        ins = _Instruction(start_line + 1, words[0][0].upper(), logical, pieces, words)
        out.append(ins)
        if ins.keyword in ("RUN", "COPY", "ADD"):
            index = _skip_heredocs(ins, lines, index, notes)
    return out, escape, notes


def _skip_heredocs(ins: _Instruction, lines: list[str], index: int, notes: list[str]) -> int:
    for raw, _, _ in ins.words[1:]:
        match = _HEREDOC.fullmatch(raw)
        if not match:
            continue
        strip_tabs, terminator = match.group(1) == "-", match.group(3)
        first = index
        while index < len(lines):
            body = lines[index].lstrip("\t") if strip_tabs else lines[index]
            index += 1
            if body == terminator:
                break
        notes.append(f"line {ins.line}: heredoc <<{terminator} (lines {first + 1}-{index}) "
                     "not analysed")
    return index


_WORD = re.compile(r"\S+")


def _words(text: str, escape: str) -> list[tuple[str, int, int]]:
    """Split on white space outside quotes; each word raw, with its offsets."""
    if escape not in text and "'" not in text and '"' not in text:
        # Most lines: nothing quoted or escaped (\S is str.isspace's complement).
        return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
    out: list[tuple[str, int, int]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start, quote = i, ""
        while i < n:
            c = text[i]
            if not quote:
                if c.isspace():
                    break
                if c == escape and i + 1 < n:
                    i += 2
                    continue
                if c in "'\"":
                    quote = c
            elif c == quote:
                quote = ""
            elif c == escape and quote == '"' and i + 1 < n:
                i += 2
                continue
            i += 1
        out.append((text[start:i], start, i))
    return out


# -- variable substitution -----------------------------------------------------------------


class _Expander:
    """Docker's word processing, limited to what image references need.

    ``env`` maps names to values, None meaning declared without a value. With
    ``env=None`` nothing is substituted (quotes are still removed): LABEL values.
    """

    def __init__(self, env: Mapping[str, str | None] | None, escape: str) -> None:
        self.env = env
        self.escape = escape
        self.missing: list[str] = []

    def word(self, s: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(s):
            c = s[i]
            if c == self.escape and i + 1 < len(s):
                out.append(s[i + 1])
                i += 2
            elif c == "'":
                end = s.find("'", i + 1)
                end = len(s) if end < 0 else end
                out.append(s[i + 1:end])
                i = end + 1
            elif c == '"':
                i = self._double(s, i + 1, out)
            elif c == "$":
                i = self._dollar(s, i, out)
            else:
                out.append(c)
                i += 1
        return "".join(out)

    def _double(self, s: str, i: int, out: list[str]) -> int:
        while i < len(s) and s[i] != '"':
            c = s[i]
            if c == self.escape and i + 1 < len(s) and s[i + 1] in ('"', "$", self.escape):
                out.append(s[i + 1])
                i += 2
            elif c == "$":
                i = self._dollar(s, i, out)
            else:
                out.append(c)
                i += 1
        return i + 1

    def _dollar(self, s: str, i: int, out: list[str]) -> int:
        if self.env is None:
            out.append("$")
            return i + 1
        if s.startswith("${", i):
            end = _closing_brace(s, i + 2)
            if end < 0:
                raise ValueError(f"unclosed ${{ in {s!r}")
            out.append(self._braced(s[i + 2:end]))
            return end + 1
        match = _NAME.match(s, i + 1)
        if not match:
            out.append("$")
            return i + 1
        out.append(self._lookup(match.group(0)))
        return match.end()

    def _braced(self, inner: str) -> str:
        match = _NAME.match(inner)
        if not match:
            raise ValueError(f"${{{inner}}} is not a variable this reader understands")
        name, rest = match.group(0), inner[match.end():]
        if not rest:
            return self._lookup(name)
        assert self.env is not None
        value = self.env.get(name)
        for op in (":-", ":+", ":?", "-", "+", "?"):
            if rest.startswith(op):
                word = rest[len(op):]
                unset = value is None or (op.startswith(":") and value == "")
                if op in (":-", "-"):
                    return self.word(word) if unset else str(value)
                if op in (":+", "+"):
                    return "" if unset else self.word(word)
                if unset:
                    self.missing.append(name)
                return value or ""
        raise ValueError(f"${{{inner}}}: only ${{VAR}}, ${{VAR:-word}}, ${{VAR:+word}} and "
                         "${VAR:?message} forms are understood here")

    def _lookup(self, name: str) -> str:
        assert self.env is not None
        value = self.env.get(name)
        if value is None:
            self.missing.append(name)
            return ""
        return value


def _closing_brace(s: str, i: int) -> int:
    depth = 1
    while i < len(s):
        if s.startswith("${", i):
            depth += 1
            i += 2
            continue
        if s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _global_args(instructions: list[_Instruction], escape: str,
                 build_args: Mapping[str, str]) -> dict[str, str | None]:
    env: dict[str, str | None] = {k: v for k, v in build_args.items() if k in AUTOMATIC_ARGS}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword != "ARG":
            continue
        for raw, _, _ in ins.words[1:]:
            name, eq, default = raw.partition("=")
            if name in build_args:
                env[name] = build_args[name]
            elif eq:
                try:
                    env[name] = _Expander(env, escape).word(default)
                except ValueError:
                    env[name] = None
            else:
                env.setdefault(name, None)
    return env


# -- analysis ------------------------------------------------------------------------------


def analyze(text: str, build_args: Mapping[str, str] | None = None) -> Analysis:
    """Stages, image uses, global ARGs and final-stage LABELs of a Dockerfile."""
    instructions, escape, notes = _read(text)
    env = _global_args(instructions, escape, build_args or {})
    stages: list[Stage] = []
    uses: list[ImageUse] = []
    names: dict[str, int] = {}
    labels: list[tuple[str, str]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stage = _stage(ins, len(stages), env, escape, names)
            if stage.name is not None:
                names.setdefault(stage.name.lower(), stage.index)
            stages.append(stage)
            labels = []
        elif not stages:
            continue
        elif ins.keyword == "COPY":
            uses += _copy_uses(ins, len(stages) - 1, escape, names)
        elif ins.keyword == "RUN":
            uses += _mount_uses(ins, len(stages) - 1, escape, names)
        elif ins.keyword == "LABEL":
            labels += _labels(ins, escape)
    return Analysis(tuple(stages), tuple(uses), env, tuple(labels), tuple(notes))


def _stage(ins: _Instruction, index: int, env: Mapping[str, str | None], escape: str,
           names: Mapping[str, int]) -> Stage:
    words = ins.words[1:]
    platform: str | None = None
    while words and words[0][0].startswith("--"):
        flag, _, value = words[0][0].partition("=")
        if flag.lower() == "--platform":
            platform = value
        words = words[1:]
    if not words:
        use = ImageUse(ins.line, "FROM", "", None, problem="FROM names no image")
        return Stage(index, ins.line, use, platform, None)
    raw, start, end = words[0]
    name: str | None = None
    problem: str | None = None
    if len(words) == 3 and words[1][0].lower() == "as":
        name = words[2][0]
    elif len(words) != 1:
        problem = "expected FROM [--platform=…] IMAGE [AS NAME]"
    use = _resolve(ins, "FROM", raw, ins.span(start, end), index, env, escape, names,
                   allow_index=False)
    if problem and not use.problem:
        use = replace(use, ref=None, stage=None, scratch=False, problem=problem)
    return Stage(index, ins.line, use, platform, name)


def _resolve(ins: _Instruction, kind: Literal["FROM", "COPY", "RUN"], raw: str,
             span: Span | None, current: int, env: Mapping[str, str | None] | None,
             escape: str, names: Mapping[str, int], *, allow_index: bool) -> ImageUse:
    base = ImageUse(ins.line, kind, raw, None, span=span)
    if env is None:
        if "$" in raw:
            return replace(base, problem=f"{raw!r} uses a variable; not resolved here")
        value = _Expander(None, escape).word(raw)
    else:
        expander = _Expander(env, escape)
        try:
            value = expander.word(raw)
        except ValueError as exc:
            return replace(base, problem=str(exc))
        if expander.missing:
            missing = ", ".join(dict.fromkeys(expander.missing))
            return replace(base, problem=f"{raw!r}: no value for {missing} (declare it with "
                           "a default before the first FROM, or pass it as a build arg)")
    base = replace(base, resolved=value)
    if allow_index and value.isdigit():
        number = int(value)
        if number < current:
            return replace(base, stage=number)
        return replace(base, problem=f"stage {number} is not an earlier stage")
    if value.lower() in names:
        return replace(base, stage=names[value.lower()])
    if kind == "FROM" and value == SCRATCH:
        return replace(base, scratch=True)
    try:
        return replace(base, ref=parse_reference(value))
    except ValueError as exc:
        return replace(base, problem=str(exc))


def _flags(ins: _Instruction) -> list[tuple[str, int, int]]:
    """The leading ``--flag…`` words of an instruction."""
    out: list[tuple[str, int, int]] = []
    for word in ins.words[1:]:
        if not word[0].startswith("--"):
            break
        out.append(word)
    return out


def _copy_uses(ins: _Instruction, current: int, escape: str,
               names: Mapping[str, int]) -> list[ImageUse]:
    out: list[ImageUse] = []
    for raw, start, _ in _flags(ins):
        flag, eq, value = raw.partition("=")
        if flag.lower() != "--from" or not eq:
            continue
        begin = start + len(flag) + 1
        span = ins.span(begin, begin + len(value))
        use = _resolve(ins, "COPY", value, span, current, None, escape, names,
                       allow_index=True)
        if use.stage is None:
            out.append(use)
    return out


_MOUNT_FROM = re.compile(r"(?:^|,)\s*from=([^,\"']*)", re.IGNORECASE)


def _mount_uses(ins: _Instruction, current: int, escape: str,
                names: Mapping[str, int]) -> list[ImageUse]:
    out: list[ImageUse] = []
    for raw, start, _ in _flags(ins):
        flag, eq, value = raw.partition("=")
        if flag.lower() != "--mount" or not eq:
            continue
        offset = start + len(flag) + 1
        match = _MOUNT_FROM.search(value.replace('"', " ").replace("'", " "))
        if not match or not match.group(1):
            continue
        text = match.group(1).rstrip()  # a closing quote became a space above
        span = ins.span(offset + match.start(1), offset + match.start(1) + len(text))
        use = _resolve(ins, "RUN", text, span, current, None, escape, names,
                       allow_index=True)
        if use.stage is None:
            out.append(use)
    return out


def _labels(ins: _Instruction, escape: str) -> list[tuple[str, str]]:
    words = ins.words[1:]
    unquote = _Expander(None, escape).word
    if words and "=" not in words[0][0]:
        # The legacy form: LABEL key value with spaces
        key = unquote(words[0][0])
        return [(key, ins.text[words[1][1]:].strip() if len(words) > 1 else "")]
    out: list[tuple[str, str]] = []
    for raw, _, _ in words:
        key, _, value = raw.partition("=")
        out.append((unquote(key), unquote(value)))
    return out


# -- how a Dockerfile takes its parent -----------------------------------------------------


@dataclass(frozen=True)
class ParentStyle:
    """``base_image``: the first FROM is ``${BASE_IMAGE}`` (the orchestrator passes the
    parent as a build arg). ``literal``: FROM lines name images; ``refs`` lists the
    distinct external ones (normalised), empty when every stage is scratch or a stage."""

    kind: Literal["base_image", "literal"]
    refs: tuple[str, ...]
    problem: str | None = None


def parent_style(text: str, build_args: Mapping[str, str] | None = None) -> ParentStyle:
    analysis = analyze(text, build_args)
    refs = tuple(ref.normalized() for ref in analysis.from_refs())
    if any(_BASE_IMAGE_VAR.search(s.image) for s in analysis.stages):
        return ParentStyle("base_image", refs, df.base_image_problem(df.parse(text)))
    if not analysis.stages:
        return ParentStyle("literal", (), "no FROM instruction")
    problems = [f"line {s.line}: {s.base.problem}" for s in analysis.stages if s.base.problem]
    return ParentStyle("literal", refs, "; ".join(problems) or None)


# -- pinning -------------------------------------------------------------------------------


def pin(text: str, pins: Mapping[str, str], build_args: Mapping[str, str] | None = None,
        ) -> str:
    """``text`` with each image word that names a key of ``pins`` replaced by its value.

    Keys are references (any spelling; they are normalised); values must be
    ``repository@digest`` references. FROM images and COPY --from / RUN --mount
    from= values are rewritten; ``--platform``, ``AS name``, every other byte and
    so every line number stay. ValueError for a bad pin value, or a word to pin
    that runs over a line continuation.
    """
    wanted: dict[str, str] = {}
    for key, value in pins.items():
        target = parse_reference(value)  # ValueError: nothing odd goes into the file
        if target.digest is None:
            raise ValueError(f"pin for {key!r}: {value!r} has no @digest")
        wanted[parse_reference(key).normalized()] = value
    analysis = analyze(text, build_args)
    edits: dict[int, list[tuple[int, int, str]]] = {}
    for use in analysis.image_uses():
        if use.ref is None or use.ref.normalized() not in wanted:
            continue
        if use.span is None:
            raise ValueError(f"line {use.line}: {use.written!r} runs over a line "
                             "continuation; cannot pin it in place")
        edits.setdefault(use.span.line - 1, []).append(
            (use.span.start, use.span.end, wanted[use.ref.normalized()]))
    if not edits:
        return text
    lines = text.split("\n")
    for number, changes in edits.items():
        line = lines[number]
        for start, end, value in sorted(changes, reverse=True):
            line = line[:start] + value + line[end:]
        lines[number] = line
    return "\n".join(lines)
