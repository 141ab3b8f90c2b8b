"""A Dockerfile's instructions, as BuildKit's own parser reads them. Pure.

The ``dockerfile`` package wraps BuildKit's Go parser (``frontend/dockerfile/
parser``), so directives, line continuations, comments inside continued lines,
heredocs (``<<EOF``, ``<<-EOF``, ``3<<EOF``, ``<<END-OF-SCRIPT``) and flags are
read exactly as the engine reads them. What it does not return, the escape
character, is read here with the same rule as BuildKit's directive parser: only
lines at the very top (after a byte order mark, leading white space allowed)
of the form ``# name=value`` with a known name are directives, and the first
other line ends them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import dockerfile as buildkit_parser

DEFAULT_ESCAPE = "\\"
_KNOWN_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*")


class DockerfileError(ValueError):
    """The engine would refuse this text before building anything."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Heredoc:
    name: str  # the terminator word
    content: str  # the body, tabs already stripped for <<-


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line where the instruction starts
    end_line: int  # its last line, heredoc bodies included
    keyword: str  # upper-case: FROM, RUN, ARG, …
    flags: tuple[str, ...]  # "--from=build", quotes already removed, as the engine reads them
    args: tuple[str, ...]  # the words after the flags (per instruction, as BuildKit splits them)
    text: str  # the instruction as one logical line, continuations joined
    heredocs: tuple[Heredoc, ...] = ()
    sub_keyword: str | None = None  # ONBUILD's instruction

    @property
    def value(self) -> str:
        """The logical line after the keyword (flags included)."""
        parts = self.text.strip().split(None, 1)
        return parts[1] if len(parts) > 1 else ""

    def flag(self, name: str) -> list[str | None]:
        """Values of ``--name=…`` flags in order; None for a ``--name`` without ``=``.
        Flag names are case-sensitive, as BuildKit's flag parser reads them."""
        out: list[str | None] = []
        for flag in self.flags:
            key, eq, value = flag[2:].partition("=")
            if key == name:
                out.append(value if eq else None)
        return out


def directives(text: str) -> dict[str, tuple[int, str]]:
    """The parser directives at the top of ``text``: name -> (line, value)."""
    found: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(text.split("\n")):
        if number == 0:
            line = line.removeprefix("\ufeff")
        line = line.rstrip("\r\n").lstrip()
        if not line.startswith("#"):
            break
        match = _DIRECTIVE.fullmatch(line[1:].lstrip())
        if not match or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        name = match.group(1).lower()
        if name in found:
            break  # the parser refuses the file; parse() says so
        found[name] = (number + 1, match.group(2))
    return found


def escape_of(text: str) -> str:
    """The escape (and line continuation) character a ``# escape=`` directive sets."""
    value = directives(text).get("escape", (0, DEFAULT_ESCAPE))[1]
    return value if value in ("\\", "`") else DEFAULT_ESCAPE


def parse(text: str) -> list[Instruction]:
    """Every instruction, in order. DockerfileError where BuildKit's parser fails
    (an unterminated heredoc, a bad escape directive, no instruction at all)."""
    return list(_parse(text))


# A catalog reads each Dockerfile when it loads and again for each build (and
# matrix variants share one): the parse of a text is kept, not redone.
@functools.lru_cache(maxsize=512)
def _parse(text: str) -> tuple[Instruction, ...]:
    try:
        commands = buildkit_parser.parse_string(text)
    except buildkit_parser.GoParseError as exc:
        raise DockerfileError(None, str(exc)) from None
    out = []
    for command in commands:
        # A heredoc's body follows the logical line in ``original``.
        logical = command.original.split("\n", 1)[0] if command.heredocs else command.original
        out.append(Instruction(
            line=command.start_line,
            end_line=command.end_line,
            keyword=command.cmd.upper(),
            flags=tuple(command.flags),
            args=tuple(command.value),
            text=logical,
            heredocs=tuple(Heredoc(h.name, h.content) for h in command.heredocs),
            # ONBUILD: its trigger runs in a child's build, not this one.
            sub_keyword=command.sub_cmd.upper() if command.sub_cmd else None,
        ))
    return tuple(out)
