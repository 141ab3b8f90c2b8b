"""Keeping credentials out of log lines and event records. Pure."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

_SECRET_KEYS = re.compile(r"(token|password|secret|authorization|auth)", re.IGNORECASE)
_CREDENTIAL = re.compile(r"(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+")


def redact_fields(fields: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank secret-looking fields and credentials embedded in strings, in place."""
    for key, value in list(fields.items()):
        if key != "event" and _SECRET_KEYS.search(key):
            fields[key] = "[redacted]"
        elif isinstance(value, str) and ("Bearer" in value or "Basic" in value):
            fields[key] = _CREDENTIAL.sub(r"\1 [redacted]", value)
    return fields
