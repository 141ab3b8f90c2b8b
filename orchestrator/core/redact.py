"""Keeping credentials out of everything the orchestrator lets out. Pure.

Two kinds reach its own text: tokens (``Authorization: Bearer …``, fields
named like ``token``) and the ``user:password@`` of a URL, which is how git
remotes and mirrors carry them (``https://ci:glpat-…@git.example/x.git``).

- ``public_url``: one URL without its userinfo. What the orchestrator records
  or hands on for a remote (an upstream's ref, ``{upstream.NAME.url}``) is
  this; only ``git ls-remote`` ever sees the remote as configured.
- ``redact_text``: the same for every URL inside a text (git's stderr, an
  exception's message), plus ``Bearer``/``Basic`` credentials and token-like
  query parameters.
- ``redact_value``: JSON-like data, walked (a statement, a webhook body).
- ``redact_fields``: an event's or log line's fields, in place (a structlog
  processor's contract); secret-looking keys are blanked.

The userinfo is removed, not masked: what is left is a working URL for
anything that authenticates another way (a credential helper, a netrc from
a build secret), and the same remote reads the same everywhere. A bare ssh
login name (``ssh://git@host/…``) is not a credential and stays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(r"(token|password|secret|authorization|auth)", re.IGNORECASE)
_CREDENTIAL = re.compile(r"(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+")
# scheme://userinfo@ — greedy up to the last "@" before the path, as URL parsers split it.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s@]*(?:@[^/?#\s@]*)*)@")
_TOKEN_QUERY = re.compile(
    r"(?i)([?&](?:access_token|private_token|token|password|passwd|secret|api_?key|sig|"
    r"x-amz-signature|x-amz-credential)=)[^&#\s\"']+")
_SSH_SCHEMES = ("ssh://", "git+ssh://", "ssh+git://")


def _strip(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if scheme.lower() in _SSH_SCHEMES and ":" not in userinfo and "@" not in userinfo:
        return match.group(0)  # a login name for a key: no secret in it
    return scheme


def public_url(url: str) -> str:
    """``url`` without ``user:password@`` (and token query parameters)."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Every URL's userinfo and every Bearer/Basic credential in ``text``, removed."""
    if "@" in text:
        text = _USERINFO.sub(_strip, text)
    if "Bearer" in text or "Basic" in text:
        text = _CREDENTIAL.sub(rf"\1 {REDACTED}", text)
    if "=" in text:
        text = _TOKEN_QUERY.sub(rf"\1{REDACTED}", text)
    return text


def redact_value(value: Any, *, keys: bool = True) -> Any:
    """A copy of JSON-like ``value`` with every string redacted and, with ``keys``,
    the values of secret-looking keys blanked; other values as they are. A
    document whose keys are data (a statement's build args) passes ``keys=False``."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: REDACTED if keys and isinstance(key, str) and _SECRET_KEYS.search(key)
                else redact_value(item, keys=keys) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item, keys=keys) for item in value]
    return value


def redact_fields(fields: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank secret-looking fields and credentials embedded in values, in place."""
    for key, value in list(fields.items()):
        if key != "event" and _SECRET_KEYS.search(key):
            fields[key] = REDACTED
        else:
            fields[key] = redact_value(value)
    return fields
