"""What each layer was last built from (its record), and when each build key was
first built (the time its images carry)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.build.state.db import AsyncDatabase, Database, off_loop
from orchestrator.core.model import FileEntry, Inputs


@dataclass(frozen=True)
class LayerRecord:
    layer: str
    build_key: str
    digest: str
    ref: str
    inputs: Inputs
    built_at: float  # last time an image was actually built (for rebuild.every)
    # A multi-platform layer's image is an index: each platform's manifest digest,
    # which that platform's children are built FROM.
    platform_digests: Mapping[str, str] = field(default_factory=dict)


# Made once: json.dumps with any option builds a new encoder on every call.
COMPACT = json.JSONEncoder(separators=(",", ":"))
SORTED = json.JSONEncoder(sort_keys=True)


def inputs_to_json(inputs: Inputs) -> str:
    return COMPACT.encode({
        "dockerfile": inputs.dockerfile,
        "files": [[e.path, e.mode, e.digest] for e in inputs.files],
        "args": [list(a) for a in inputs.args],
        "parent_digest": inputs.parent_digest,
        "bases": [list(b) for b in inputs.bases],
        "platforms": list(inputs.platforms),
        "secrets": list(inputs.secrets),
        "packages": [list(p) for p in inputs.packages],
    })


def inputs_from_json(text: str) -> Inputs:
    data: dict[str, Any] = json.loads(text)
    return Inputs(
        dockerfile=data["dockerfile"],
        files=tuple(FileEntry(p, m, d) for p, m, d in data["files"]),
        args=tuple((k, v) for k, v in data["args"]),
        parent_digest=data["parent_digest"],
        bases=tuple((r, d) for r, d in data.get("bases", [])),
        platforms=tuple(data.get("platforms", [])),
        secrets=tuple(data.get("secrets", [])),
        packages=tuple((n, v) for n, v in data.get("packages", [])),
    )


_COLUMNS = "layer, build_key, digest, ref, inputs, built_at, platform_digests"


def _record(row: tuple[Any, ...]) -> LayerRecord:
    return LayerRecord(row[0], row[1], row[2], row[3], inputs_from_json(row[4]), row[5],
                       json.loads(row[6] or "{}"))


class LayerRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, layer: str) -> LayerRecord | None:
        row = self.db.read.execute(f"SELECT {_COLUMNS} FROM layers WHERE layer = ?",
                                   (layer,)).fetchone()
        return None if row is None else _record(row)

    def all(self, only: Collection[str] | None = None) -> dict[str, LayerRecord]:
        """Every layer's record, or those of ``only``: one query (a run reads its
        layers' records up front, not one statement per layer)."""
        rows = self.db.read.execute(f"SELECT {_COLUMNS} FROM layers").fetchall()
        return {r[0]: _record(r) for r in rows if only is None or r[0] in only}

    def save(self, record: LayerRecord) -> None:
        self.db.conn.execute(
            "INSERT OR REPLACE INTO layers (layer, build_key, digest, ref, inputs, built_at, "
            "updated_at, platform_digests) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.layer, record.build_key, record.digest, record.ref,
             inputs_to_json(record.inputs), record.built_at, time.time(),
             SORTED.encode(dict(record.platform_digests)) if record.platform_digests
             else "{}"),
        )

    def first_built(self, key: str, layer: str, now: float) -> float:
        """When ``key`` was first built, recording ``now`` if it never was (inside
        the caller's transaction)."""
        # Not an upsert with RETURNING: that needs SQLite 3.35 (RHEL 9 has 3.34).
        row = self.db.conn.execute("SELECT first_built FROM keys WHERE build_key = ?",
                                   (key,)).fetchone()
        if row is not None:
            return float(row[0])
        self.db.conn.execute("INSERT INTO keys VALUES (?, ?, ?)", (key, layer, now))
        return now

    def keys(self) -> dict[str, tuple[str, float]]:
        """Every build key this state knows: key -> (layer, first built)."""
        return {row[0]: (row[1], float(row[2])) for row in
                self.db.read.execute("SELECT build_key, layer, first_built FROM keys")}


class AsyncLayerRecords:
    def __init__(self, part: LayerRecords, adb: AsyncDatabase) -> None:
        self.part, self.adb = part, adb

    get = off_loop(LayerRecords.get)
    all = off_loop(LayerRecords.all)
    save = off_loop(LayerRecords.save)
    keys = off_loop(LayerRecords.keys)
