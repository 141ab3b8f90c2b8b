"""``.dockerignore`` semantics, so the build key sees exactly what the builder sends.

Follows Docker's rules: one pattern a line, ``#`` comments, ``!`` re-includes,
the last matching pattern wins, ``*``/``?``/``[…]`` do not cross ``/``, ``**``
crosses any number of directories, and a pattern that matches a directory
matches everything below it. Pure.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    negated: bool
    source: str


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


class DockerIgnore:
    def __init__(self, lines: list[str]) -> None:
        self._patterns: list[_Pattern] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:].strip()
            cleaned = posixpath.normpath(line).lstrip("/")
            if cleaned in ("", "."):
                continue
            regex = re.compile(_translate(cleaned) + r"\Z")
            self._patterns.append(_Pattern(regex, negated, raw))

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        return cls(text.splitlines())

    @property
    def empty(self) -> bool:
        return not self._patterns

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative, "/"-separated) is left out of the context."""
        if not self._patterns:
            return False
        # A pattern matching any parent directory matches the path as well.
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for pattern in self._patterns:
            if any(pattern.regex.match(prefix) for prefix in prefixes):
                result = not pattern.negated
        return result

    def may_include_below(self, directory: str) -> bool:
        """False when nothing below an excluded ``directory`` can be re-included,
        so a context walk can skip it (``node_modules``, ``.git``)."""
        if not self.excluded(directory):
            return True
        return any(p.negated for p in self._patterns)
