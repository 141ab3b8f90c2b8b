"""Version ordering of distribution packages, each by its distribution's own rules. Pure.

- Debian (``deb``): dpkg's ordering, from python-debian (``debian_support.Version``,
  which uses libapt's comparison when python-apt is importable and its own port of
  dpkg's rules otherwise). Not reimplemented here: epochs, ``~`` sorting before the
  empty string and the letter/non-letter rules are easy to get subtly wrong.
- Alpine (``apk``): apk-tools' rules (``src/version.c``), written here from their
  description; ``tests/unit/data/apk_version.data`` holds apk-tools' own vectors.
  A version is ``digit{.digit}...{letter}{_suffix{number}}...{~hash}{-r#}``;
  suffixes ``alpha``/``beta``/``pre``/``rc`` sort before the release and
  ``cvs``/``svn``/``git``/``hg``/``p`` after it; a digit group with a leading
  zero compares as a string (as Gentoo does).
"""

from __future__ import annotations

import enum
import functools
from typing import Literal

Ordering = Literal["deb", "apk"]


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b`` in ``ecosystem``."""
    if ecosystem == "deb":
        return deb_compare(a, b)
    if ecosystem == "apk":
        return apk_compare(a, b)
    raise ValueError(f"no version ordering for {ecosystem!r} packages")


def newer(ecosystem: str, candidate: str, installed: str) -> bool:
    return compare(ecosystem, candidate, installed) > 0


def comparable(ecosystem: str, text: str) -> bool:
    """Whether ``text`` is a version of ``ecosystem``: an index may offer anything.
    dpkg's ordering raises on the others; apk's orders any text as far as it parses
    ("3.3.2-r0" followed by a terminal escape sorts as 3.3.2-r0), so it is asked too."""
    if ecosystem == "deb":
        return deb_valid(text)
    return apk_valid(text) if ecosystem == "apk" else False


# --- Debian ------------------------------------------------------------------------------


def deb_compare(a: str, b: str) -> int:
    version = _deb_version()
    left, right = version(a), version(b)
    return int(left > right) - int(left < right)


def deb_valid(text: str) -> bool:
    try:
        _deb_version()(text)
    except ValueError:
        return False
    return True


@functools.cache
def _deb_version() -> type:
    # Imported on first use: the one-shot CLI never compares Debian versions.
    from debian.debian_support import Version

    return Version


# --- Alpine ------------------------------------------------------------------------------


class _Token(enum.IntEnum):
    # Their order matters: a version that goes on with a lower kind of token
    # than the other's sorts higher (1.0.1 > 1.0, 1.0-r1 > 1.0).
    INITIAL_DIGIT = 0
    DIGIT = 1
    LETTER = 2
    SUFFIX = 3
    SUFFIX_NO = 4
    COMMIT_HASH = 5
    REVISION_NO = 6
    END = 7
    INVALID = 8


# Suffix ranks: below NONE sorts before the bare release (pre-releases).
_SUFFIXES = {"alpha": 1, "beta": 2, "pre": 3, "rc": 4, "cvs": 6, "svn": 7, "git": 8,
             "hg": 9, "p": 10}
_SUFFIX_NONE = 5
_HEX = frozenset("0123456789abcdef")


class _Lexer:
    """apk's tokenizer: each token's kind is decided by its first character, and
    each kind may only follow certain others."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.token = _Token.INITIAL_DIGIT
        self.value = ""
        self.number = 0
        self.suffix = 0
        self._digits()
        if not self.value:
            self.token = _Token.INVALID

    def _digits(self) -> None:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isascii() \
                and self.text[self.pos].isdigit():
            self.pos += 1
        self.value = self.text[start:self.pos]
        self.number = int(self.value) if self.value else 0

    def next(self) -> None:
        text, pos = self.text, self.pos
        if pos >= len(text):
            self.token = _Token.END
            return
        char = text[pos]
        if "a" <= char <= "z":
            if self.token > _Token.DIGIT:
                self.token = _Token.INVALID
                return
            self.value, self.token, self.pos = char, _Token.LETTER, pos + 1
        elif char == "." or "0" <= char <= "9":
            if char == "." and self.token > _Token.DIGIT:
                self.token = _Token.INVALID
                return
            if self.token in (_Token.INITIAL_DIGIT, _Token.DIGIT):
                kind = _Token.DIGIT
            elif self.token is _Token.SUFFIX:
                kind = _Token.SUFFIX_NO
            else:
                self.token = _Token.INVALID
                return
            self.pos = pos + 1 if char == "." else pos
            self._digits()
            self.token = kind if self.value else _Token.INVALID
        elif char == "_":
            if self.token > _Token.SUFFIX_NO:
                self.token = _Token.INVALID
                return
            end = pos + 1
            while end < len(text) and "a" <= text[end] <= "z":
                end += 1
            self.value = text[pos + 1:end]
            if self.value not in _SUFFIXES:
                self.token = _Token.INVALID
                return
            self.suffix, self.token, self.pos = _SUFFIXES[self.value], _Token.SUFFIX, end
        elif char == "~":
            if self.token >= _Token.COMMIT_HASH:
                self.token = _Token.INVALID
                return
            end = pos + 1
            while end < len(text) and text[end] in _HEX:
                end += 1
            self.value = text[pos + 1:end]
            self.token = _Token.COMMIT_HASH if self.value else _Token.INVALID
            self.pos = end
        elif char == "-":
            if self.token >= _Token.REVISION_NO or not text.startswith("-r", pos):
                self.token = _Token.INVALID
                return
            self.pos = pos + 2
            self._digits()
            self.token = _Token.REVISION_NO if self.value else _Token.INVALID
        else:
            self.token = _Token.INVALID


def _token_compare(a: _Lexer, b: _Lexer) -> int:
    kind = a.token
    if kind is _Token.DIGIT and (a.value.startswith("0") or b.value.startswith("0")):
        return _string_compare(a.value, b.value)  # 1.01 vs 1.1: compared as text
    if kind in (_Token.INITIAL_DIGIT, _Token.DIGIT, _Token.SUFFIX_NO, _Token.REVISION_NO):
        left, right = a.number, b.number
    elif kind is _Token.LETTER:
        left, right = ord(a.value), ord(b.value)
    elif kind is _Token.SUFFIX:
        left, right = a.suffix, b.suffix
    else:
        return _string_compare(a.value, b.value)
    return (left > right) - (left < right)


def _string_compare(a: str, b: str) -> int:
    # Byte order, then the shorter first: apk's blob sort.
    return (a > b) - (a < b)


def apk_compare(a: str, b: str, *, fuzzy: bool = False) -> int:
    """apk's ordering of two versions. ``fuzzy``: ``b`` is a prefix pattern (apk's
    ``~`` operator), so ``3.6.9`` compares equal to ``3.6``. Invalid versions are
    compared as far as they parse, as apk does."""
    left, right = _Lexer(a), _Lexer(b)
    while left.token == right.token and left.token < _Token.END:
        result = _token_compare(left, right)
        if result:
            return result
        left.next()
        right.next()
    if left.token == right.token:
        return 0
    if right.token is _Token.END and fuzzy:
        return 0
    # Equal so far: the longer one is newer, unless it goes on with a pre-release suffix.
    if left.token is _Token.SUFFIX and left.suffix < _SUFFIX_NONE:
        return -1
    if right.token is _Token.SUFFIX and right.suffix < _SUFFIX_NONE:
        return 1
    if left.token > right.token:
        return -1
    if right.token > left.token:
        return 1
    return 0


def apk_valid(text: str) -> bool:
    lexer = _Lexer(text)
    while lexer.token < _Token.END:
        lexer.next()
    return lexer.token is _Token.END
