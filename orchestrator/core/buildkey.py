"""The build key: one sha256 over everything a layer's image is made from. Pure.

DESIGN §2: the Dockerfile; every file, link and directory the engine receives
(path, permission bits, content); the resolved build args; the parent's image
digest and every other base image's; the platform set; the names of the build
secrets (never their values); the fixed package versions a layer was rebuilt
against for a package fix, when there are any. Keyed on the parent's *output*
digest, a rebuilt parent cascades to its children and a reproducible one (same
digest) stops the cascade.
"""

from __future__ import annotations

import hashlib

from orchestrator.core.model import FileEntry, Inputs

# Bump when the encoding below changes, so old keys never collide with new ones.
KEY_VERSION = "orchestrator-build-key/2"
KEY_TAG_PREFIX = "bk-"


def _encode(fields: list[str]) -> bytes:
    """Each field as its 8-byte big-endian length and its UTF-8 bytes."""
    out = bytearray()
    for value in fields:
        data = value.encode("utf-8", "surrogateescape")
        out += len(data).to_bytes(8, "big")
        out += data
    return bytes(out)


def build_key(inputs: Inputs) -> str:
    """Hex sha256. Fields are length-prefixed so no two inputs encode alike.
    Encoded whole, then hashed once: a 2,000-layer run keys every layer."""
    fields = [KEY_VERSION, "dockerfile", inputs.dockerfile, "parent", inputs.parent_digest,
              "args", str(len(inputs.args))]
    for name, value in sorted(inputs.args):
        fields += (name, value)
    fields += ("files", str(len(inputs.files)))
    for entry in sorted(inputs.files, key=_path):
        fields += (entry.path, format(entry.mode, "o"), entry.digest)
    fields += ("bases", str(len(inputs.bases)))
    for ref, digest in sorted(inputs.bases):
        fields += (ref, digest)
    fields += ("platforms", str(len(inputs.platforms)), *sorted(inputs.platforms))
    fields += ("secrets", str(len(inputs.secrets)), *sorted(inputs.secrets))
    if inputs.packages:
        # Only when there are any: every key made before package fixes existed stays
        # the same (the encodings still differ, the list being length-prefixed).
        fields += ("packages", str(len(inputs.packages)))
        for name, version in sorted(inputs.packages):
            fields += (name, version)
    return hashlib.sha256(_encode(fields)).hexdigest()


def _path(entry: FileEntry) -> str:
    return entry.path


def context_digest(files: tuple[FileEntry, ...]) -> str:
    """Hex sha256 of a context's file set alone (what provenance calls the context)."""
    fields: list[str] = []
    for entry in sorted(files, key=_path):
        fields += (entry.path, format(entry.mode, "o"), entry.digest)
    return hashlib.sha256(_encode(fields)).hexdigest()


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
