"""Registry credentials from a standard auth file.

Reads containers' ``auth.json`` and Docker's ``config.json`` (the same
``{"auths": {host: {"auth": base64("user:pass")}}}`` shape). Credentials stay
in memory; only the file's path is ever handed to a builder or logged.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.errors import InputError

_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
                    "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never shown by repr() in a log line


def _normalise(key: str) -> str:
    key = key.removeprefix("https://").removeprefix("http://")
    return key.split("/", 1)[0] if key.endswith("/v1/") or key.endswith("/v2/") else key


class AuthStore:
    def __init__(self, entries: dict[str, Credentials], path: Path | None = None) -> None:
        self._entries = entries
        self.path = path

    @classmethod
    def empty(cls) -> AuthStore:
        return cls({})

    @classmethod
    def load(cls, path: Path | None) -> AuthStore:
        if path is None:
            return cls.empty()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(str(path), "registry auth_file not found") from None
        except (OSError, ValueError) as exc:
            raise InputError(str(path), f"cannot read registry auth file: {exc}") from exc
        auths = data.get("auths", {}) if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            raise InputError(str(path), "expected {\"auths\": {\"host\": {\"auth\": …}}}")
        entries: dict[str, Credentials] = {}
        for key, value in auths.items():
            creds = _decode(value)
            if creds is not None:
                entries[_normalise(key)] = creds
        return cls(entries, path)

    def lookup(self, registry: str, repository: str = "") -> Credentials | None:
        """Most specific entry first: "host/ns/repo", "host/ns", then "host"."""
        candidates = []
        if repository:
            parts = f"{registry}/{repository}".split("/")
            candidates = ["/".join(parts[:n]) for n in range(len(parts), 1, -1)]
        candidates.append(registry)
        if registry in ("registry-1.docker.io", "docker.io", "index.docker.io"):
            candidates.extend(_normalise(k) for k in _DOCKER_HUB_KEYS)
        for candidate in candidates:
            if candidate in self._entries:
                return self._entries[candidate]
        return None


def _decode(value: object) -> Credentials | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("auth"), str) and value["auth"]:
        try:
            user, _, password = base64.b64decode(value["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credentials(user, password)
    if isinstance(value.get("username"), str) and isinstance(value.get("password"), str):
        return Credentials(value["username"], value["password"])
    return None
