"""Variable substitution and quote removal in one word, as BuildKit does it. Pure.

A port of the rules of BuildKit's ``frontend/dockerfile/shell/lex.go``
(``ProcessWord``): ``$NAME`` and ``${NAME}``; ``${NAME:-word}``,
``${NAME-word}``, ``${NAME:+word}``, ``${NAME+word}``, ``${NAME:?message}``,
``${NAME?message}``; single quotes keep everything; double quotes keep
everything but ``$`` and the escapes ``\\"``, ``\\$`` and ``\\\\``; outside
quotes the escape character escapes the next one. A variable without a value
becomes the empty string, as in BuildKit; :class:`Expansion` lists the names
that did so, so a caller can refuse an image name that silently lost a part.

The pattern forms (``${NAME#…}``, ``${NAME%…}``, ``${NAME/…/…}``) are newer
than the engines this project drives (Docker 20.10's BuildKit, buildah 1.28)
and are refused, as those engines refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_SPECIAL = frozenset("@*#?-$!0")


class WordError(ValueError):
    pass


@dataclass(frozen=True)
class Expansion:
    value: str
    missing: tuple[str, ...] = ()  # names used as $NAME / ${NAME} that had no value
    used: tuple[str, ...] = ()  # every name looked up


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> Expansion:
    """``word`` with variables from ``env`` substituted and quotes removed.
    WordError for what BuildKit refuses (an unclosed quote or brace, a bad
    substitution, a ``${NAME?}`` whose NAME has no value)."""
    if "$" not in word and "'" not in word and '"' not in word and escape not in word:
        return Expansion(word)  # most image names: nothing to do
    lexer = _Lexer(word, env, escape)
    value = lexer.until(None, raw_escapes=False)
    return Expansion(value, tuple(dict.fromkeys(lexer.missing)), tuple(dict.fromkeys(lexer.used)))


def unquote(word: str, escape: str = "\\") -> str:
    """Quotes and escapes removed, ``$`` left as written (a LABEL as text)."""
    return _Lexer(word, None, escape).until(None, raw_escapes=False)


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str] | None, escape: str) -> None:
        self.text = text
        self.i = 0
        self.env = env
        self.escape = escape
        self.missing: list[str] = []
        self.used: list[str] = []

    def _peek(self) -> str | None:
        return self.text[self.i] if self.i < len(self.text) else None

    def _next(self) -> str | None:
        ch = self._peek()
        if ch is not None:
            self.i += 1
        return ch

    def until(self, stop: str | None, *, raw_escapes: bool) -> str:
        out: list[str] = []
        while (ch := self._peek()) is not None:
            if stop is not None and ch == stop:
                self.i += 1
                return "".join(out)
            if ch == "$" and self.env is not None:
                out.append(self._dollar())
            elif ch == "'":
                out.append(self._single())
            elif ch == '"':
                out.append(self._double(raw_escapes))
            else:
                self.i += 1
                if ch == self.escape:
                    if raw_escapes:
                        out.append(ch)
                    following = self._next()
                    if following is None:
                        break
                    ch = following
                out.append(ch)
        if stop is not None:
            raise WordError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out)

    def _single(self) -> str:
        self.i += 1
        end = self.text.find("'", self.i)
        if end < 0:
            raise WordError("unexpected end of statement while looking for matching "
                            "single-quote")
        value = self.text[self.i:end]
        self.i = end + 1
        return value

    def _double(self, raw_escapes: bool) -> str:
        self.i += 1
        out: list[str] = []
        while True:
            ch = self._peek()
            if ch is None:
                raise WordError("unexpected end of statement while looking for matching "
                                "double-quote")
            if ch == '"':
                self.i += 1
                return "".join(out)
            if ch == "$" and self.env is not None:
                out.append(self._dollar())
                continue
            self.i += 1
            if ch == self.escape:
                if raw_escapes:
                    out.append(ch)
                following = self._peek()
                if following is None:
                    continue
                if following in ('"', "$", self.escape):
                    ch = following
                    self.i += 1
            out.append(ch)

    def _name(self) -> str:
        start = self.i
        ch = self._peek()
        if ch is not None and ch.isdigit():
            while (ch := self._peek()) is not None and ch.isdigit():
                self.i += 1
            return self.text[start:self.i]
        if ch is not None and ch in _SPECIAL:
            self.i += 1
            return ch
        while (ch := self._peek()) is not None and (ch.isalnum() or ch == "_"):
            self.i += 1
        return self.text[start:self.i]

    def _lookup(self, name: str) -> str | None:
        assert self.env is not None
        self.used.append(name)
        return self.env.get(name)

    def _dollar(self) -> str:
        self.i += 1
        if self._peek() != "{":
            name = self._name()
            if not name:
                return "$"
            value = self._lookup(name)
            if value is None:
                self.missing.append(name)
            return value or ""
        self.i += 1
        first = self._peek()
        if first is None:
            raise WordError("syntax error: missing '}'")
        if first in "{}:":
            raise WordError("syntax error: bad substitution")
        name = self._name()
        ch = self._next()
        if ch == "}":
            value = self._lookup(name)
            if value is None:
                self.missing.append(name)
            return value or ""
        modifier = ch or ""
        null_is_unset = ch == ":"
        if null_is_unset:
            ch = self._next()
            modifier += ch or ""
        if ch in ("#", "%") or (ch == "/" and not null_is_unset):
            raise WordError(f"${{{name}{modifier}…}}: pattern substitution is not supported by "
                            "Docker 20.10's BuildKit or buildah 1.28; set the value with an "
                            "ARG instead")
        if ch not in ("+", "-", "?"):
            raise WordError(f"unsupported modifier ({modifier}) in substitution")
        word = self._braced_word()
        value = self._lookup(name)
        unset = value is None or (null_is_unset and value == "")
        if ch == "-":
            return word if unset else value or ""
        if ch == "+":
            return "" if unset else word
        if value is None or (null_is_unset and value == ""):
            what = "unset" if value is None else "empty"
            raise WordError(f"{name}: {word or f'is not allowed to be {what}'}")
        return value

    def _braced_word(self) -> str:
        try:
            return self.until("}", raw_escapes=False)
        except WordError:
            if self._peek() is None:
                raise WordError("syntax error: missing '}'") from None
            raise
