"""A copy of a Dockerfile whose image names are pinned by digest, and the names
under which engines look up named build contexts. Pure.

:func:`pin` is for an engine without named build contexts (the Docker 20.10
CLI): it is given the copy with ``-f``; the user's file is never edited. In
the copy exactly the image words are replaced (a FROM image, a ``--from=``
flag, a ``from=`` field of a ``--mount``) and every other byte stays, so each
instruction keeps its line, and the engine's messages point into the user's
file. Which words name an image is decided by :func:`.stages.analyze` over
the build's args; the words are found in the physical lines of the
instruction the parser reported, continuations and heredoc bodies included
as BuildKit reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.core.dockerfile.stages import Analysis, ImageUse, analyze
from orchestrator.core.dockerfile.syntax import Instruction
from orchestrator.core.dockerfile.words import unquote
from orchestrator.core.imageref import parse_reference


def buildkit_context_name(reference: str) -> str:
    """The key BuildKit's frontend looks a named context up by (dockerui's
    ``NamedContext``): the familiar form, ``docker.io/library/`` dropped, and a
    ``:latest`` tag dropped (``debian``, ``debian:bookworm``, ``myorg/app:1``)."""
    return parse_reference(reference).familiar().removesuffix(":latest")


def check_pins(pins: Mapping[str, str]) -> dict[str, str]:
    """``pins`` keyed by normalised reference; ValueError for a value that is not
    ``repository@digest``: nothing odd goes into a file or a command line."""
    wanted: dict[str, str] = {}
    for key, value in pins.items():
        target = parse_reference(value)
        if target.digest is None:
            raise ValueError(f"pin for {key!r}: {value!r} has no @digest")
        wanted[parse_reference(key).normalized()] = value
    return wanted


def pinned_uses(analysis: Analysis, pins: Mapping[str, str]) -> list[tuple[ImageUse, str]]:
    """Each image use the pins cover, with its pinned reference."""
    wanted = check_pins(pins)
    return [(use, wanted[use.ref.normalized()]) for use in analysis.image_uses()
            if use.ref is not None and use.ref.normalized() in wanted]


def pin(text: str, pins: Mapping[str, str], build_args: Mapping[str, str] | None = None, *,
        platform: str | None = None) -> str:
    """``text`` with each image word that names a key of ``pins`` replaced by its value.

    Keys are references (any spelling); values ``repository@digest``. ValueError
    for a bad pin, or a word that cannot be replaced in place (it runs over a
    line continuation, or a quoted ``--mount``).
    """
    analysis = analyze(text, build_args, platform=platform)
    uses = pinned_uses(analysis, pins)
    if not uses:
        return text
    by_line = {ins.line: ins for ins in analysis.instructions}
    lines = text.split("\n")
    edits: dict[int, list[tuple[int, int, str]]] = {}
    for use, target in uses:
        ins = by_line[use.line]
        for number, start, end, word in _words_to_replace(lines, ins, use, target,
                                                          analysis.escape):
            edits.setdefault(number, []).append((start, end, word))
    for number, changes in edits.items():
        line = lines[number]
        for start, end, word in sorted(set(changes), reverse=True):
            line = line[:start] + word + line[end:]
        lines[number] = line
    return "\n".join(lines)


@dataclass(frozen=True)
class _Word:
    text: str
    line: int | None  # 0-based physical line, None when it runs over a continuation
    start: int
    end: int


def _logical_words(lines: list[str], ins: Instruction, escape: str) -> list[_Word]:
    """The white-space separated words of the instruction's logical line, each with
    where it sits: the physical lines from its first, continued by a trailing
    escape, comment and blank lines inside skipped, as BuildKit joins them."""
    continuation = re.compile(rf"(?<!{re.escape(escape)}){re.escape(escape)}[ \t]*$")
    pieces: list[tuple[int, int, str]] = []  # (line, column, text)
    number = ins.line - 1
    first = True
    while number < len(lines):
        raw, offset = lines[number].removesuffix("\r"), 0
        if number == 0 and raw.startswith("\ufeff"):
            raw, offset = raw[1:], 1
        body = raw.lstrip() if first else raw
        column = offset + len(raw) - len(body)
        if not first and (not raw.strip() or raw.lstrip().startswith("#")):
            number += 1
            continue
        first = False
        cut = continuation.search(body)
        pieces.append((number, column, body[:cut.start()] if cut else body))
        number += 1
        if not cut:
            break
    words: list[_Word] = []
    pending: list[tuple[int, int, str]] = []  # parts of a word that may go on
    for line, column, text in pieces:
        for match in re.finditer(r"\S+|\s+", text):
            if match.group().isspace():
                if pending:
                    words.append(_join(pending))
                    pending = []
                continue
            pending.append((line, column + match.start(), match.group()))
        # a piece that ends without white space runs on into the next one
    if pending:
        words.append(_join(pending))
    return words


def _join(parts: list[tuple[int, int, str]]) -> _Word:
    text = "".join(p[2] for p in parts)
    if len(parts) == 1:
        line, start, word = parts[0]
        return _Word(text, line, start, start + len(word))
    return _Word(text, None, 0, 0)


def _words_to_replace(lines: list[str], ins: Instruction, use: ImageUse, target: str,
                      escape: str) -> list[tuple[int, int, int, str]]:
    words = _logical_words(lines, ins, escape)[1:]  # the keyword first
    found: list[tuple[_Word, str]] = []
    if use.instruction == "FROM":
        image = next((w for w in words if not w.text.startswith("--")), None)
        if image is not None and image.text == use.written:
            found.append((image, target))
    elif use.instruction == "COPY":
        for word in words:
            if word.text.startswith("--from=") and \
                    unquote(word.text[len("--from="):], escape) == use.written:
                found.append((word, f"--from={target}"))
    else:
        for word in words:
            if not word.text.startswith("--mount=") or '"' in word.text or "'" in word.text:
                continue
            fields = word.text[len("--mount="):].split(",")
            replaced = [f"{key}={target}" if key.lower() == "from" and value == use.written
                        else field for field in fields
                        for key, _, value in [field.partition("=")]]
            if replaced == fields:
                continue
            found.append((word, "--mount=" + ",".join(replaced)))
    if not found:
        raise ValueError(f"line {use.line}: cannot find {use.written!r} in the instruction to "
                         "pin it (a quoted or escaped word)")
    out = []
    for word, replacement in found:
        if word.line is None:
            raise ValueError(f"line {use.line}: {use.written!r} runs over a line "
                             "continuation; cannot pin it in place")
        out.append((word.line, word.start, word.end, replacement))
    return out


def buildah_context_names(text: str, pins: Mapping[str, str],
                          build_args: Mapping[str, str] | None = None, *,
                          platform: str | None = None) -> dict[str, str]:
    """``--build-context`` names for buildah, which looks a FROM up by its text as
    written, before ARG expansion (imagebuildah's executor), and a ``--from`` or
    ``from=`` by its value: each pinned use under the name buildah asks for."""
    analysis = analyze(text, build_args, platform=platform)
    out: dict[str, str] = {}
    for use, target in pinned_uses(analysis, pins):
        out[use.written] = target
        if use.resolved is not None:
            out.setdefault(use.resolved, target)
    return out
