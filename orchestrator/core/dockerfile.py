"""Just enough Dockerfile parsing to check how a layer takes its parent. Pure.

Handles comments, parser directives (``# escape=`` changes the continuation
character) and line continuations; every instruction keeps its line number
so findings can point at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIRECTIVE = re.compile(r"^#\s*(\w+)\s*=\s*(\S+)\s*$")
_BASE_REF = re.compile(r"^\$(?:\{BASE_IMAGE\}|BASE_IMAGE)(?:\s|$)")


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line where the instruction starts
    keyword: str  # upper-case: FROM, RUN, ARG, …
    value: str  # the rest, continuations joined with a space


def parse(text: str) -> list[Instruction]:
    escape = "\\"
    lines = text.splitlines()
    start = 0
    # Parser directives are only read at the very top, before any other line.
    while start < len(lines):
        match = _DIRECTIVE.match(lines[start])
        if not match:
            break
        if match.group(1).lower() == "escape":
            escape = match.group(2)
        start += 1

    out: list[Instruction] = []
    buffer: list[str] = []
    first_line = 0
    for number, raw in enumerate(lines[start:], start=start + 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments may sit inside a continued instruction too
        if not buffer:
            first_line = number
        if stripped.endswith(escape):
            buffer.append(stripped[: -len(escape)].strip())
            continue
        buffer.append(stripped)
        out.append(_instruction(first_line, " ".join(b for b in buffer if b)))
        buffer = []
    if buffer:
        out.append(_instruction(first_line, " ".join(b for b in buffer if b)))
    return out


def _instruction(line: int, text: str) -> Instruction:
    keyword, _, value = text.partition(" ")
    return Instruction(line, keyword.upper(), value.strip())


def base_image_problem(instructions: list[Instruction]) -> str | None:
    """Why this Dockerfile cannot take its parent through BASE_IMAGE, or None."""
    declared = False
    for ins in instructions:
        if ins.keyword == "ARG":
            names = [part.split("=", 1)[0] for part in ins.value.split()]
            declared = declared or "BASE_IMAGE" in names
        elif ins.keyword == "FROM":
            image = " ".join(w for w in ins.value.split() if not w.startswith("--"))
            if not _BASE_REF.match(image):
                return (f"line {ins.line}: the first FROM must be FROM ${{BASE_IMAGE}} so "
                        "the orchestrator can pass the parent pinned by digest")
            if not declared:
                return (f"line {ins.line}: declare ARG BASE_IMAGE before the first FROM")
            return None
    return "no FROM instruction"
