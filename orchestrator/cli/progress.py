"""What a one-shot ``build`` says while it works, on stderr.

The same event names and fields as the daemon's log (``build_started``,
``build_finished``, …): one JSON object a line off a TTY, a short line on one.
Written with the standard library only, so a ``plan`` or ``build`` does not pay
for loading the daemon's logging stack. Long builds get a ``build_progress``
line every ``heartbeat_s`` so a terminal or CI log shows which layer is busy
and for how long.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from orchestrator.core.redact import redact_fields

HEARTBEAT_S = 30.0
# Events for the live view only: the lines off a terminal stay as they were.
QUIET = frozenset({"layer_up_to_date", "upstreams_resolved"})
_HUMAN_FIELDS = ("layer", "builder", "reason", "outcome", "duration_s", "elapsed_s", "digest",
                 "error", "trigger", "interrupted", "containers_removed")


class Progress:
    def __init__(self, stream: TextIO, *, as_json: bool | None = None,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.stream = stream
        self.as_json = (not stream.isatty()) if as_json is None else as_json
        self.heartbeat_s = heartbeat_s
        self.running: dict[str, tuple[str, float]] = {}  # build id -> (layer, started)

    def __call__(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        if event in QUIET:
            return
        if event == "build_started":
            self.running[str(fields.get("build_id"))] = (str(fields.get("layer")), time.time())
        elif event == "build_finished":
            self.running.pop(str(fields.get("build_id")), None)
        self.emit(event, dict(fields), level)

    def emit(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        redact_fields(fields)
        now = datetime.now(UTC)
        if self.as_json:
            record = {"timestamp": now.isoformat().replace("+00:00", "Z"), "level": level,
                      "event": event, **fields}
            line = json.dumps(record, default=str)
        else:
            parts = [f"{k}={fields[k]}" for k in _HUMAN_FIELDS if fields.get(k) is not None]
            line = f"{now.astimezone():%H:%M:%S} {event:<15} " + " ".join(parts)
        print(line, file=self.stream, flush=True)

    async def heartbeat(self) -> None:
        """Until cancelled: name every build still running, with its elapsed time."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            now = time.time()
            for build_id, (layer, started) in list(self.running.items()):
                self.emit("build_progress", {"layer": layer, "build_id": build_id,
                                             "elapsed_s": round(now - started)})
