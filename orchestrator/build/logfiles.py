"""Build logs in the state dir: one file per build, pruned after [state] log_retention."""

from __future__ import annotations

import contextlib
from pathlib import Path


def prune_logs(logs: Path, cutoff: float, keep: set[str]) -> int:
    """Delete build logs last written before ``cutoff``; never those of the
    build ids in ``keep`` (running builds)."""
    if not logs.is_dir():
        return 0
    removed = 0
    for path in logs.glob("*.log"):
        with contextlib.suppress(FileNotFoundError):
            if path.stem not in keep and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed
