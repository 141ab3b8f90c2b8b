"""Ignore-file semantics of the real build engines, so the build key sees exactly
what the engine sends. Pure.

The rules are those of the engine versions this project runs (Debian bookworm
packages), read from their sources and checked against the engines themselves
(``tests/integration/test_dockerignore_differential.py``):

``docker`` (Docker CLI 20.10 with ``DOCKER_BUILDKIT=1``; ``buildkit`` is treated
the same, see below)
    The daemon's Dockerfile frontend (BuildKit 0.8, ``builder/build.go``) reads
    ``<Dockerfile>.dockerignore`` next to the Dockerfile, else ``.dockerignore``
    at the context root; it never reads ``.containerignore``. Lines are parsed by
    ``frontend/dockerfile/dockerignore.ReadAll``: a UTF-8 BOM is dropped from line
    1, a line is a comment only when ``#`` is its very first character (so
    ``  # x`` is the pattern ``# x``), whitespace is trimmed around the line and
    after a leading ``!``, the rest is ``filepath.Clean``-ed and one leading
    ``/`` is dropped. The CLI then walks the context (``tonistiigi/fsutil``
    ``Walk``, pattern matcher ``docker/pkg/fileutils`` 20.10).

``buildah`` (1.28)
    ``pkg/parse.ContainerIgnoreFile``: ``<Dockerfile>.dockerignore``, else
    ``<Dockerfile>.containerignore``, else ``.containerignore``, else
    ``.dockerignore``. Lines are parsed by ``openshift/imagebuilder.ParseIgnore``:
    split on ``\\n`` only, no BOM handling, comment only when ``#`` is the first
    character, ``/`` trimmed from both ends *before* whitespace is. The copy walk
    is ``copier.Get`` with the matcher of ``containers/storage/pkg/fileutils``
    1.43.

Both matchers turn a pattern into a Go regular expression the same way: ``*``
is ``[^/]*``, ``?`` is ``[^/]``, ``**`` is ``.*`` at the end and ``(.*/)?``
elsewhere (so ``src/**_test.go`` matches ``src/_test.go`` and
``src/pkg/_test.go`` but not ``src/pkg/foo_test.go``), ``\\x`` escapes ``x``,
only ``.`` and ``$`` are quoted, and everything else -- ``[...]``, ``+``,
``(``, ``|``, ``{`` -- goes to Go's regexp as it is. So ``[!a]`` is the class
of ``!`` and ``a`` (not a negation), ``[^a]`` is a negation that also matches
``/``, and a pattern Go cannot parse makes the engine fail the build. That Go
syntax is emulated here (RE2 syntax, translated to Python's ``re``). Before
that, each pattern must pass ``filepath.Match``'s syntax check (an unclosed
``[``, ``[]``, ``[a-]`` or a trailing ``\\`` fail the build), and a lone ``!``
is refused.

Where the engines differ (each is modelled with its own rules):

* Parent directories. Docker's ``Matches`` tests the path, then only the one
  ancestor that has as many components as the pattern; buildah's regex ends in
  ``(/.*)?`` and so matches everything below a match. This differs inside an
  excluded directory the walk still enters: ``**/x`` with ``!a/b/x/keep``
  sends ``a/b/x/other`` on docker, not on buildah.
* Entering an excluded directory (only when there are ``!`` patterns). Docker
  enters it when some ``!`` pattern starts with ``dir/`` and then sends the
  directory entry itself; buildah enters it when some ``!`` pattern plus ``/``
  starts with the directory's path as a plain string (``!ab/c`` enters ``a``)
  and sends the directory only as the parent of something it sends.
* Parsing: a BOM on line 1 (docker drops it; buildah keeps it in the pattern,
  though Go's scanner then skips it when building the regex), `` /x`` (docker:
  ``x``; buildah: ``/x``, which matches nothing), ``/../x`` (docker: ``x``;
  buildah: ``../x``, nothing), ``! x`` (docker: ``!x``; buildah: ``! x``
  re-includes `` x``).
* The ignore file itself (``.containerignore`` and
  ``<Dockerfile>.containerignore`` are buildah only).

``buildkit`` (``buildctl`` with the Dockerfile frontend) uses the same frontend
rules for which file is read; its matching depends on the ``buildctl`` client's
own fsutil version, which this host does not have, so it is modelled as
``docker`` -- unverified.

For callers: decode the ignore file as plain UTF-8 (a BOM must reach
``parse``, the engines differ on it), ask about directories with
``directory=True`` (or a trailing "/"), and surface ``error``: the engine
will refuse that file, so no build key can describe the build.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Engine = Literal["buildah", "docker", "buildkit"]
ENGINES: Final[tuple[Engine, ...]] = ("buildah", "docker", "buildkit")
DEFAULT_ENGINE: Final[Engine] = "buildah"  # the configuration's default backend

# bufio.Scanner's default limit: BuildKit's ReadAll fails on a longer line.
_MAX_SCAN_LINE = 64 * 1024
_BOM = "\ufeff"


def _engine(engine: str) -> Engine:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    return engine


def ignore_file_for(engine: str, dockerfile_rel: str,
                    exists: Callable[[str], bool]) -> str | None:
    """The ignore file (context-relative, "/"-separated) ``engine`` reads for a
    build of ``dockerfile_rel`` (the Dockerfile's path relative to the context),
    or None when it reads none. ``exists`` answers for a context-relative path.

    docker/buildkit: ``<Dockerfile>.dockerignore`` beside the Dockerfile, else
    ``.dockerignore`` (the BuildKit frontend; the classic builder, not used
    here, reads only ``.dockerignore``). buildah: ``<Dockerfile>.dockerignore``,
    ``<Dockerfile>.containerignore``, ``.containerignore``, ``.dockerignore``,
    first that exists."""
    kind = _engine(engine)
    dockerfile = _clean(dockerfile_rel)
    if kind == "buildah":
        candidates = [dockerfile + ".dockerignore", dockerfile + ".containerignore",
                      ".containerignore", ".dockerignore"]
    else:
        candidates = [dockerfile + ".dockerignore", ".dockerignore"]
    for candidate in candidates:
        if exists(candidate):
            return candidate
    return None


# -- Go's string functions, as the engines use them ---------------------------

# unicode.IsSpace: Python's str.isspace() also takes U+001C..U+001F, Go does not.
_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                      + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _trim_space(s: str) -> str:
    start, end = 0, len(s)
    while start < end and s[start] in _GO_SPACE:
        start += 1
    while end > start and s[end - 1] in _GO_SPACE:
        end -= 1
    return s[start:end]


def _clean(path: str) -> str:
    """filepath.Clean (posixpath.normpath keeps a leading "//", Go does not)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    joined = "/".join(parts)
    if rooted:
        return "/" + joined
    return joined or "."


def _glob_syntax_error(pattern: str) -> bool:
    """Whether filepath.Match(pattern, ".") reports ErrBadPattern (Go >= 1.16
    checks the whole pattern). The engines call it only for this check."""
    rest = pattern
    while rest:
        while rest.startswith("*"):
            rest = rest[1:]
        # scanChunk: up to the next "*" outside a [...]
        in_range, i = False, 0
        while i < len(rest):
            ch = rest[i]
            if ch == "\\":
                if i + 1 < len(rest):
                    i += 1
            elif ch == "[":
                in_range = True
            elif ch == "]":
                in_range = False
            elif ch == "*" and not in_range:
                break
            i += 1
        chunk, rest = rest[:i], rest[i:]
        if _chunk_error(chunk):
            return True
    return False


def _chunk_error(chunk: str) -> bool:
    n, i = len(chunk), 0

    def class_char(i: int) -> int:  # getEsc: index after one class character, or -1
        if i >= n or chunk[i] in "-]":
            return -1
        if chunk[i] == "\\":
            i += 1
            if i >= n:
                return -1
        i += 1
        return i if i < n else -1

    while i < n:
        ch = chunk[i]
        if ch == "[":
            i += 1
            if i < n and chunk[i] == "^":
                i += 1
            ranges = 0
            while True:
                if i < n and chunk[i] == "]" and ranges > 0:
                    i += 1
                    break
                i = class_char(i)
                if i < 0:
                    return True
                if chunk[i] == "-":
                    i = class_char(i + 1)
                    if i < 0:
                        return True
                ranges += 1
        elif ch == "\\":
            i += 2
            if i > n:
                return True
        else:
            i += 1
    return False


def _go_pattern_regex(pattern: str, *, storage: bool) -> str:
    """The Go regular expression the engine's matcher builds from a pattern:
    docker/pkg/fileutils 20.10 (``storage=False``) or containers/storage 1.43
    (``storage=True``: a trailing ``(/.*)?`` so a match takes what is below)."""
    # text/scanner skips a byte-order mark as the very first character.
    chars = pattern[1:] if pattern.startswith(_BOM) else pattern
    out = ["^"]
    i, n = 0, len(chars)
    while i < n:
        ch = chars[i]
        i += 1
        if ch == "*":
            if i < n and chars[i] == "*":
                i += 1
                if i < n and chars[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch in ".$":
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append("\\" + chars[i])
                i += 1
            elif storage:
                raise _RegexError("trailing backslash")
            else:
                out.append("\\")
        else:
            out.append(ch)
    out.append("(/.*)?$" if storage else "$")
    return "".join(out)


# -- Go regexp (RE2 syntax, Perl flags) to Python re --------------------------

class _RegexError(ValueError):
    """Go's regexp.Compile would refuse the expression (or it uses a construct,
    such as a Unicode class \\p{..}, that this emulation does not support)."""


_MAX_RUNE = 0x10FFFF
_WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_PERL_CLASSES: Final[dict[str, tuple[tuple[int, int], ...]]] = {
    "d": ((0x30, 0x39),),
    "s": ((0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)),
    "w": _WORD,
}
_POSIX_CLASSES: Final[dict[str, tuple[tuple[int, int], ...]]] = {
    "alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    "alpha": ((0x41, 0x5A), (0x61, 0x7A)),
    "ascii": ((0x00, 0x7F),),
    "blank": ((0x09, 0x09), (0x20, 0x20)),
    "cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
    "digit": ((0x30, 0x39),),
    "graph": ((0x21, 0x7E),),
    "lower": ((0x61, 0x7A),),
    "print": ((0x20, 0x7E),),
    "punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": ((0x09, 0x0D), (0x20, 0x20)),
    "upper": ((0x41, 0x5A),),
    "word": _WORD,
    "xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}
_MAX_REPEAT = 1000
_REPEAT = re.compile(r"\{([0-9]+)(?:(,)([0-9]*))?\}")


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, next_lo = [], 0
    for lo, hi in sorted(ranges):
        if lo > next_lo:
            out.append((next_lo, lo - 1))
        next_lo = max(next_lo, hi + 1)
    if next_lo <= _MAX_RUNE:
        out.append((next_lo, _MAX_RUNE))
    return out


def _ascii_fold(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """Case-fold closure of an ASCII class, as Go's appendFoldedClass makes it
    (k and s also fold to KELVIN SIGN and LONG S)."""
    out = list(ranges)
    for lo, hi in ranges:
        for c in range(lo, hi + 1):
            ch = chr(c)
            if ch.isalpha():
                out.append((ord(ch.swapcase()),) * 2)
                if ch in "kK":
                    out.append((0x212A, 0x212A))
                if ch in "sS":
                    out.append((0x17F, 0x17F))
    return out


def _class_source(ranges: list[tuple[int, int]], negated: bool) -> str:
    if not ranges:
        return r"[\s\S]" if negated else "(?!)"
    body = "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}"
                   for lo, hi in ranges)
    return f"[{'^' if negated else ''}{body}]"


@dataclass(frozen=True)
class _Node:
    """Just enough of Go's parse tree to apply its nested-repeat size limit."""

    subs: tuple[_Node, ...] = ()
    repeat: tuple[int, int] | None = None  # (min, max) of an x{n,m}

    def within(self, budget: int) -> bool:  # regexp/syntax repeatIsValid
        if self.repeat is not None:
            low, high = self.repeat
            m = high
            if m == 0:
                return True
            if m < 0:
                m = low
            if m > budget:
                return False
            if m > 0:
                budget //= m
        return all(sub.within(budget) for sub in self.subs)


@dataclass(frozen=True)
class _Item:
    source: str
    node: _Node


class _GoRegexTranslator:
    """Parses a Go regexp (syntax.Perl flags, as regexp.Compile uses) and writes
    a Python expression with the same matches, or raises _RegexError where Go
    would fail to compile. Greediness and captures do not change whether a
    match exists, so both are dropped."""

    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0

    def translate(self) -> str:
        result = self._alternation(frozenset())
        if self.i < len(self.s):
            raise _RegexError("unexpected )")
        return result.source

    # flags: "i" fold case, "m" multi-line, "s" dot matches \n ("U" is moot)
    def _alternation(self, flags: frozenset[str]) -> _Item:
        branches: list[_Item] = []
        while True:
            branch, flags = self._concat(flags)
            branches.append(branch)
            if self.i < len(self.s) and self.s[self.i] == "|":
                self.i += 1
                continue
            break
        source = "|".join(b.source for b in branches)
        return _Item(source, _Node(tuple(b.node for b in branches)))

    def _concat(self, flags: frozenset[str]) -> tuple[_Item, frozenset[str]]:
        s = self.s
        items: list[_Item] = []
        last_was_repeat = False
        while self.i < len(s) and s[self.i] not in "|)":
            ch = s[self.i]
            repeat = self._repeat_at()
            if repeat is not None:
                low, high, end = repeat
                if end < len(s) and s[end] == "?":  # non-greedy: same matches
                    end += 1
                if last_was_repeat:
                    raise _RegexError("invalid nested repetition operator")
                if not items:
                    raise _RegexError("missing argument to repetition operator")
                sub = items[-1]
                counted = ch == "{"
                node = _Node((sub.node,), (low, high) if counted else None)
                if counted and (low >= 2 or high >= 2) and not node.within(_MAX_REPEAT):
                    raise _RegexError("invalid repeat count")
                if not counted:
                    suffix = ch
                elif high < 0:
                    suffix = f"{{{low},}}"
                else:
                    suffix = f"{{{low}}}" if low == high else f"{{{low},{high}}}"
                items[-1] = _Item(f"(?:{sub.source}){suffix}", node)
                self.i = end
                last_was_repeat = True
                continue
            last_was_repeat = False
            if ch == "(":
                if s.startswith("(?", self.i):
                    group, flags = self._perl_group(flags)
                    if group is not None:
                        items.append(group)
                    continue
                self.i += 1
                items.append(self._group(flags))
            elif ch == "[":
                items.append(self._class(flags))
            elif ch == ".":
                self.i += 1
                items.append(_Item("(?s:.)" if "s" in flags else "[^\\n]", _Node()))
            elif ch == "^":
                self.i += 1
                items.append(_Item("(?m:^)" if "m" in flags else r"\A", _Node()))
            elif ch == "$":
                self.i += 1
                items.append(_Item("(?m:$)" if "m" in flags else r"\Z", _Node()))
            elif ch == "\\":
                items.extend(self._escape(flags))
            else:
                self.i += 1
                items.append(self._literal(ord(ch), flags))
        return _Item("".join(x.source for x in items), _Node(tuple(x.node for x in items))), \
            flags

    def _repeat_at(self) -> tuple[int, int, int] | None:
        """(min, max, end) when a repetition operator starts here (max -1: none)."""
        s, i = self.s, self.i
        ch = s[i]
        if ch == "*":
            return 0, -1, i + 1
        if ch == "+":
            return 1, -1, i + 1
        if ch == "?":
            return 0, 1, i + 1
        if ch != "{":
            return None
        # parseRepeat: {n}, {n,}, {n,m}; anything else makes "{" a literal.
        m = _REPEAT.match(s, i)
        if m is None:
            return None
        digits = [m.group(1)] + ([m.group(3)] if m.group(3) else [])
        if any(len(d) > 1 and d[0] == "0" for d in digits):
            return None  # leading zeros are not a count
        if m.group(2) and m.group(3) == "":
            low, high = int(m.group(1)), -1
        else:
            low = int(m.group(1))
            high = int(m.group(3)) if m.group(2) else low
        if low > _MAX_REPEAT or high > _MAX_REPEAT or (high >= 0 and low > high):
            raise _RegexError("invalid repeat count")
        return low, high, m.end()

    def _group(self, flags: frozenset[str]) -> _Item:
        inner = self._alternation(flags)
        if self.i >= len(self.s) or self.s[self.i] != ")":
            raise _RegexError("missing closing )")
        self.i += 1
        return _Item(f"(?:{inner.source})", _Node((inner.node,)))

    def _perl_group(self, flags: frozenset[str]) -> tuple[_Item | None, frozenset[str]]:
        s = self.s
        if len(s) - self.i > 4 and s.startswith("(?P<", self.i):
            end = s.find(">", self.i)
            name = s[self.i + 4:end] if end >= 0 else ""
            if end < 0 or not name or not all(c == "_" or (c.isascii() and c.isalnum())
                                                for c in name):
                raise _RegexError("invalid named capture")
            self.i = end + 1
            return self._group(flags), flags
        j = self.i + 2
        new = set(flags)
        negate = saw_flag = False
        while j < len(s):
            c = s[j]
            j += 1
            if c in "imsU":
                if negate:
                    new.discard(c)
                else:
                    new.add(c)
                saw_flag = True
            elif c == "-" and not negate:
                negate, saw_flag = True, False
            elif c in ":)":
                if negate and not saw_flag:
                    break
                self.i = j
                if c == ")":  # (?flags): for the rest of the enclosing group
                    return None, frozenset(new)
                return self._group(frozenset(new)), flags
            else:
                break
        raise _RegexError("invalid or unsupported Perl syntax")

    def _literal(self, rune: int, flags: frozenset[str]) -> _Item:
        text = re.escape(chr(rune))
        return _Item(f"(?i:{text})" if "i" in flags else text, _Node())

    def _escape(self, flags: frozenset[str]) -> list[_Item]:
        s, i = self.s, self.i
        if i + 1 >= len(s):
            raise _RegexError("trailing backslash at end of expression")
        c = s[i + 1]
        simple = {"A": r"\A", "z": r"\Z", "b": r"(?a:\b)", "B": r"(?a:\B)"}
        if c in simple:
            self.i = i + 2
            return [_Item(simple[c], _Node())]
        if c == "C":
            raise _RegexError("invalid escape sequence: \\C")
        if c == "Q":  # \Q...\E: literal text
            end = s.find("\\E", i + 2)
            text = s[i + 2:] if end < 0 else s[i + 2:end]
            self.i = len(s) if end < 0 else end + 2
            return [self._literal(ord(ch), flags) for ch in text]
        if c in "pP":
            raise _RegexError("Unicode classes (\\p, \\P) are not supported")
        if c.lower() in _PERL_CLASSES:
            self.i = i + 2
            return [_Item(self._perl_class(c, flags, negated=False), _Node())]
        rune, self.i = self._escaped_rune(i)
        return [self._literal(rune, flags)]

    @staticmethod
    def _perl_ranges(c: str, flags: frozenset[str]) -> tuple[list[tuple[int, int]], bool]:
        ranges = _PERL_CLASSES[c.lower()]
        return (_ascii_fold(ranges) if "i" in flags else list(ranges)), c.isupper()

    def _perl_class(self, c: str, flags: frozenset[str], *, negated: bool) -> str:
        ranges, neg = self._perl_ranges(c, flags)
        return _class_source(ranges, neg != negated)

    def _escaped_rune(self, i: int) -> tuple[int, int]:
        """parseEscape at s[i] == "\\": (rune, index after it)."""
        s = self.s
        if i + 1 >= len(s):
            raise _RegexError("trailing backslash at end of expression")
        c = s[i + 1]
        j = i + 2
        if c.isascii() and not c.isalnum():
            return ord(c), j
        octal = "01234567"
        if c in "1234567" and not (j < len(s) and s[j] in octal):
            raise _RegexError("invalid escape sequence (backreferences are not supported)")
        if c in octal:
            value = int(c)
            for _ in range(2):
                if j < len(s) and s[j] in octal:
                    value = value * 8 + int(s[j])
                    j += 1
            return value, j
        if c == "x":
            if j < len(s) and s[j] == "{":
                end = s.find("}", j)
                digits = s[j + 1:end] if end >= 0 else ""
                if not digits or not all(d in "0123456789abcdefABCDEF" for d in digits) \
                        or int(digits, 16) > _MAX_RUNE:
                    raise _RegexError("invalid escape sequence")
                return int(digits, 16), end + 1
            digits = s[j:j + 2]
            if len(digits) != 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise _RegexError("invalid escape sequence")
            return int(digits, 16), j + 2
        controls = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
        if c in controls:
            return controls[c], j
        raise _RegexError(f"invalid escape sequence: \\{c}")

    def _class(self, flags: frozenset[str]) -> _Item:
        s = self.s
        i = self.i + 1
        negated = i < len(s) and s[i] == "^"
        if negated:
            i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while first or i >= len(s) or s[i] != "]":
            first = False
            if i >= len(s):
                raise _RegexError("missing closing ]")
            if s.startswith("[:", i) and len(s) - i > 2:
                end = s.find(":]", i + 2)
                if end >= 0:
                    name = s[i + 2:end]
                    negate_group = name.startswith("^")
                    group = _POSIX_CLASSES.get(name[1:] if negate_group else name)
                    if group is None:
                        raise _RegexError("invalid character class range")
                    folded = _ascii_fold(group) if "i" in flags else list(group)
                    ranges += _complement(folded) if negate_group else folded
                    i = end + 2
                    continue
            if s.startswith(("\\p", "\\P"), i):
                raise _RegexError("Unicode classes (\\p, \\P) are not supported")
            if s[i] == "\\" and i + 1 < len(s) and s[i + 1].lower() in _PERL_CLASSES:
                group_ranges, group_negated = self._perl_ranges(s[i + 1], flags)
                ranges += _complement(group_ranges) if group_negated else group_ranges
                i += 2
                continue
            lo, i = self._class_char(i)
            hi = lo
            if i + 1 < len(s) and s[i] == "-" and s[i + 1] != "]":
                hi, i = self._class_char(i + 1)
                if hi < lo:
                    raise _RegexError("invalid character class range")
            ranges.append((lo, hi))
        self.i = i + 1
        source = _class_source(ranges, negated)
        return _Item(f"(?i:{source})" if "i" in flags else source, _Node())

    def _class_char(self, i: int) -> tuple[int, int]:
        if i >= len(self.s):
            raise _RegexError("missing closing ]")
        if self.s[i] == "\\":
            return self._escaped_rune(i)
        return ord(self.s[i]), i + 1


def _compile_go(go_regex: str) -> re.Pattern[str]:
    source = _GoRegexTranslator(go_regex).translate()
    try:
        return re.compile(source)
    except re.error as exc:  # a construct this emulation got wrong: say so, never guess
        raise _RegexError(f"cannot emulate {go_regex!r}: {exc}") from None


# -- the engines: reading the file, compiling the patterns, walking ----------

def _read_docker(lines: list[str]) -> tuple[list[str], str | None]:
    """BuildKit's dockerignore.ReadAll."""
    out: list[str] = []
    for number, line in enumerate(lines):
        if len(line.encode("utf-8", "surrogateescape")) >= _MAX_SCAN_LINE:
            return out, f"line {number + 1}: token too long (the engine cannot read the file)"
        if number == 0 and line.startswith(_BOM):
            line = line[1:]
        if line.startswith("#"):
            continue
        pattern = _trim_space(line)
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = _trim_space(pattern[1:])
        if pattern:
            pattern = _clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out, None


def _read_buildah(lines: list[str]) -> list[str]:
    """imagebuilder.ParseIgnore."""
    out = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        line = line.strip("/")
        if line:
            out.append(line)
    return out


@dataclass(frozen=True)
class _Pattern:
    text: str  # the cleaned pattern without "!" (what the engine's Pattern.String() gives)
    negated: bool
    regex: re.Pattern[str]
    depth: int  # number of "/"-separated components


def _compile_patterns(raw: list[str], engine: Engine) -> tuple[list[_Pattern], str | None]:
    """NewPatternMatcher of docker/pkg/fileutils (docker) or containers/storage
    (buildah), plus the regex compile both do lazily on first use -- which a
    walk always reaches, so an error there fails the build as well."""
    storage = engine == "buildah"
    patterns: list[_Pattern] = []
    for line in raw:
        p = _trim_space(line)
        if not p:
            continue
        p = _clean(p)
        negated = p.startswith("!")
        if negated:
            if len(p) == 1:
                return patterns, 'illegal exclusion pattern: "!"'
            p = p[1:]
            if storage:
                p = _clean(p).removeprefix("/")
        if _glob_syntax_error(p):
            return patterns, f"syntax error in pattern {p!r}"
        try:
            regex = _compile_go(_go_pattern_regex(p, storage=storage))
        except _RegexError as exc:
            return patterns, f"pattern {p!r}: {exc}"
        patterns.append(_Pattern(p, negated, regex, len(p.split("/"))))
    return patterns, None


def _split_lines(text: str, engine: Engine) -> list[str]:
    lines = text.split("\n")
    if engine != "buildah":
        # bufio.ScanLines: no empty token after a final newline, one "\r" dropped
        if lines and lines[-1] == "":
            lines.pop()
        lines = [line.removesuffix("\r") for line in lines]
    return lines


class DockerIgnore:
    """An ignore file as one engine applies it to a build context.

    ``excluded`` and ``may_include_below`` follow the engine's own walk: a path
    is sent only when the walk enters every directory above it and does not
    exclude the path itself. ``error`` is set when the engine would refuse the
    file (the build fails); the patterns before the bad one still apply here.
    """

    def __init__(self, lines: list[str], engine: str = DEFAULT_ENGINE) -> None:
        self._engine = _engine(engine)
        if self._engine == "buildah":
            raw, read_error = _read_buildah(lines), None
        else:
            raw, read_error = _read_docker(lines)
        self._patterns, compile_error = _compile_patterns(raw, self._engine)
        self._error = read_error or compile_error
        self._has_negations = any(p.negated for p in self._patterns)
        self._enter_cache: dict[str, bool] = {}

    @classmethod
    def parse(cls, text: str, engine: str = DEFAULT_ENGINE) -> DockerIgnore:
        """From the file's text, decoded as UTF-8 *without* dropping a BOM (the
        engines differ on it)."""
        return cls(_split_lines(text, _engine(engine)), engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def empty(self) -> bool:
        return not self._patterns

    @property
    def error(self) -> str | None:
        """Why the engine would fail the build over this file, or None."""
        return self._error

    @property
    def patterns(self) -> tuple[str, ...]:
        """The patterns as the engine's matcher holds them ("!" for re-includes)."""
        return tuple(("!" if p.negated else "") + p.text for p in self._patterns)

    def __repr__(self) -> str:
        return f"DockerIgnore({list(self.patterns)!r}, engine={self._engine!r})"

    # -- the engines' matchers ---------------------------------------------

    def _matches(self, path: str) -> bool:
        """PatternMatcher.Matches of the engine: the last pattern that matches wins."""
        matched = False
        if self._engine == "buildah":
            for p in self._patterns:
                if p.regex.search(path):
                    matched = not p.negated
            return matched
        # docker/pkg/fileutils 20.10: the path, else its ancestor of the pattern's depth
        slash = path.rfind("/")
        parents = path[:slash].split("/") if slash >= 0 else None
        for p in self._patterns:
            hit = p.regex.search(path) is not None
            if not hit and parents is not None and p.depth <= len(parents):
                hit = p.regex.search("/".join(parents[:p.depth])) is not None
            if hit:
                matched = not p.negated
        return matched

    def _enters_excluded(self, directory: str) -> bool:
        """Whether the walk goes on below a directory the matcher excludes."""
        if not self._has_negations:
            return False
        for p in self._patterns:
            if not p.negated:
                continue
            if self._engine == "buildah":
                # copier.Get: string prefix, not a path-component one
                if (p.text.strip("/") + "/").startswith(directory.strip("/")):
                    return True
            elif (p.text + "/").startswith(directory + "/"):  # fsutil.Walk
                return True
        return False

    def _enters(self, directory: str) -> bool:
        """Whether the walk enters ``directory`` (all its ancestors included)."""
        known = self._enter_cache.get(directory)
        if known is not None:
            return known
        slash = directory.rfind("/")
        result = slash < 0 or self._enters(directory[:slash])
        if result and self._matches(directory):
            result = self._enters_excluded(directory)
        if len(self._enter_cache) < 100_000:
            self._enter_cache[directory] = result
        return result

    # -- public ------------------------------------------------------------

    def excluded(self, path: str, *, directory: bool = False) -> bool:
        """Whether the engine leaves ``path`` (relative, "/"-separated) out.

        For a directory (``directory=True`` or a trailing "/"), whether its own
        entry is left out: docker sends an excluded directory it walks into
        for a "!" pattern, buildah does not (it still appears in the image as
        the parent of anything sent below it, like every parent)."""
        if path.endswith("/"):
            directory = True
        rel = _relative(path)
        if not rel or not self._patterns:
            return False
        slash = rel.rfind("/")
        if slash >= 0 and not self._enters(rel[:slash]):
            return True
        if not self._matches(rel):
            return False
        return not (directory and self._engine != "buildah" and self._enters_excluded(rel))

    def may_include_below(self, directory: str) -> bool:
        """False when nothing below ``directory`` can be sent (the engine does not
        walk into it), so a context walk can skip it (``node_modules``, ``.git``)."""
        rel = _relative(directory)
        return not rel or self._enters(rel)


def _relative(path: str) -> str:
    rel = path.strip("/")
    while rel.startswith("./"):
        rel = rel[2:].lstrip("/")
    return "" if rel == "." else rel
