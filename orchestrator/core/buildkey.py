"""The build key: one sha256 over everything a layer's image is made from. Pure.

DESIGN §2: the Dockerfile; every file, link and directory the engine receives
(path, permission bits, content); the resolved build args; the parent's image
digest and every other base image's; the platform set; the names of the build
secrets (never their values). Keyed on the parent's *output* digest, a rebuilt
parent cascades to its children and a reproducible one (same digest) stops
the cascade.
"""

from __future__ import annotations

import hashlib

from orchestrator.core.model import FileEntry, Inputs

# Bump when the encoding below changes, so old keys never collide with new ones.
KEY_VERSION = "orchestrator-build-key/2"
KEY_TAG_PREFIX = "bk-"


def build_key(inputs: Inputs) -> str:
    """Hex sha256. Fields are length-prefixed so no two inputs encode alike."""
    h = hashlib.sha256()

    def put(*fields: str) -> None:
        for value in fields:
            data = value.encode("utf-8", "surrogateescape")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)

    put(KEY_VERSION, "dockerfile", inputs.dockerfile, "parent", inputs.parent_digest)
    put("args", str(len(inputs.args)))
    for name, value in sorted(inputs.args):
        put(name, value)
    put("files", str(len(inputs.files)))
    for entry in sorted(inputs.files, key=lambda e: e.path):
        put(entry.path, format(entry.mode, "o"), entry.digest)
    put("bases", str(len(inputs.bases)))
    for ref, digest in sorted(inputs.bases):
        put(ref, digest)
    put("platforms", str(len(inputs.platforms)), *sorted(inputs.platforms))
    put("secrets", str(len(inputs.secrets)), *sorted(inputs.secrets))
    return h.hexdigest()


def context_digest(files: tuple[FileEntry, ...]) -> str:
    """Hex sha256 of a context's file set alone (what provenance calls the context)."""
    h = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e.path):
        for value in (entry.path, format(entry.mode, "o"), entry.digest):
            data = value.encode("utf-8", "surrogateescape")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()


def key_tag(key: str) -> str:
    """The tag that marks an image as built from ``key``. Full length: a tag
    prefix collision would make the orchestrator reuse the wrong image."""
    return KEY_TAG_PREFIX + key


def first_changed_path(old: tuple[FileEntry, ...], new: tuple[FileEntry, ...]) -> str | None:
    """The first path (in sorted order) added, removed or changed between two contexts."""
    before = {e.path: e for e in old}
    after = {e.path: e for e in new}
    for path in sorted(before.keys() | after.keys()):
        if before.get(path) != after.get(path):
            return path
    return None
