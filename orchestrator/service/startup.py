"""What a daemon does before it is ready, in order: open the state dir (waiting
out a full disk instead of crashing into a restart loop), then recover what a
dead owner left (interrupted builds marked, their containers removed, their
layers and the work they were serving queued again)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from orchestrator.build.runs import STATE_DB, clear_scratch, recover_interrupted
from orchestrator.build.snapshot import scratch_path
from orchestrator.build.state import AsyncStateStore, StateStore, is_unwritable, restrict
from orchestrator.core.model import Catalog, Config
from orchestrator.engines.pool import BuilderPool
from orchestrator.service.durability import StateHealth
from orchestrator.service.queue import WorkQueue
from orchestrator.service.sdnotify import Notifier

STATE_RETRY_S = (1, 2, 5, 10, 30, 60)

Publish = Callable[[str, dict[str, Any], str], None]


async def open_state(config: Config, publish: Publish, notifier: Notifier,
                     stop: asyncio.Event) -> tuple[AsyncStateStore, int] | None:
    """The state dir and its database, and how many leftovers of a killed run were
    cleared; None when stopped while waiting for the disk."""
    group = config.daemon.socket_group
    attempt = 0
    while True:
        try:
            store, removed = await asyncio.to_thread(_open, config, group)
            break
        except Exception as exc:
            if not is_unwritable(exc):
                raise
            delay = STATE_RETRY_S[min(attempt, len(STATE_RETRY_S) - 1)]
            attempt += 1
            publish("state_unwritable", {"error": str(exc), "retry_in_s": delay}, "error")
            notifier.notify(f"STATUS=waiting: the state dir {config.state_dir} refuses "
                            f"writes ({exc})",
                            # systemd must not time the start out meanwhile
                            "EXTEND_TIMEOUT_USEC=" + str(int((delay + 30) * 1e6)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return None
    state = AsyncStateStore(store)
    if state.moved_aside is not None:
        publish("state_corrupt", {"moved_to": str(state.moved_aside)}, "error")
    return state, removed


def _open(config: Config, group: str | None) -> tuple[StateStore, int]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    # History and logs are for the socket's users only: same group rule.
    restrict(config.state_dir, 0o750 if group is None else 0o770, group)
    (config.state_dir / "logs").mkdir(exist_ok=True)
    restrict(config.state_dir / "logs", 0o750 if group is None else 0o770, group)
    removed = clear_scratch(config.state_dir, scratch_path(config.scratch, config.state_dir))
    return StateStore(config.state_dir / STATE_DB, group), removed


async def recover(state: AsyncStateStore, pool: BuilderPool, queue: WorkQueue,
                  health: StateHealth, catalog: Catalog, publish: Publish,
                  scratch_removed: int) -> None:
    try:
        interrupted, cleaned = await recover_interrupted(state, pool)
    except Exception as exc:
        if not is_unwritable(exc):
            raise
        # The builds stay 'running' until the state takes writes; the next start
        # marks them.
        health.failed("marking interrupted builds", exc)
        interrupted, cleaned = [], 0
    for build in interrupted:
        publish("build_interrupted", {"layer": build["layer"], "build_id": build["id"]},
                "warning")
    requeued_layers = [b["layer"] for b in interrupted if b["layer"] in catalog.layers]
    if requeued_layers:
        await queue.add(sorted(set(requeued_layers)), force=False,
                        cause="re-run after interrupted build "
                              + ", ".join(b["id"] for b in interrupted))
    # What the dead run was serving waits again, merged into the entries above
    # (its force and request ids kept).
    requeued: list[int] = []

    async def requeue() -> None:
        requeued.append(await state.work.requeue_taken())

    await health.write("requeueing taken work", requeue)
    if interrupted or sum(requeued) or scratch_removed or cleaned:
        publish("state_recovered", {"interrupted": len(interrupted), "requeued": sum(requeued),
                                    "scratch_removed": scratch_removed,
                                    "containers_removed": cleaned}, "info")
