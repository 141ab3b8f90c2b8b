"""``{name}`` placeholders in tags and build args. Pure.

Names are matrix variables (``{python}``) or upstream values
(``{upstream.pyenv.tag}``, ``.digest``, ``.version`` — the tag without a
leading "v" — and ``.url``, the git remote or repository it is read from).
``{{`` and ``}}`` stand for literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from orchestrator.core.errors import TemplateError
from orchestrator.core.redact import public_url

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
UPSTREAM_FIELDS = ("tag", "digest", "version", "url")


def placeholders(template: str) -> list[str]:
    return [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1) is not None]


def expand(template: str, values: Mapping[str, str], *, keep_unknown: bool = False) -> str:
    """Substitute placeholders; unknown names raise unless ``keep_unknown``."""

    def sub(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token if keep_unknown else token[0]
        name = match.group(1).strip()
        if name in values:
            return values[name]
        if keep_unknown:
            return token
        raise TemplateError(template, name)

    return _PLACEHOLDER.sub(sub, template)


def upstream_values(name: str, tag: str | None, digest: str,
                    url: str | None = None) -> dict[str, str]:
    """``url``: where the upstream lives (a git remote, a registry repository):
    an air-gapped host points it at its mirror, and the build clones from there.
    Never with the remote's ``user:password@``: build args stay in the image's
    history, its provenance and the key; a build that needs the credential
    mounts it as a build secret."""
    values = {f"upstream.{name}.digest": digest}
    if url is not None:
        values[f"upstream.{name}.url"] = public_url(url)
    if tag is not None:
        values[f"upstream.{name}.tag"] = tag
        values[f"upstream.{name}.version"] = tag[1:] if tag[:1] in "vV" else tag
    return values
