"""The daemon's work queue: persistent, coalescing, and answerable per request.

Every trigger is a *request* with its own id that stays answerable (queued,
running, done, and per layer what happened). Layers are queued once: a trigger
for a layer already waiting merges into its entry, keeping the strongest
intent (``force`` wins) and every request id. A trigger for a layer that the
current run holds marks it *changed*: its not-yet-started build, and those of
its descendants, are superseded instead of building on a digest about to be
replaced, and the entry is handed back to wait for the follow-up run — still
with its force and its requests. Nothing is lost across a crash: entries live
in the state database, and a run that was refused (bad input) gives its
entries back untouched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.build.state import AsyncStateStore, is_unwritable
from orchestrator.service.durability import StateHealth


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Entry:
    id: int
    layer: str
    force: bool
    cause: str
    request_id: str  # the first request the entry served (builds record it)
    requests: tuple[str, ...]  # every request merged into it

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Entry:
        return cls(row["id"], row["layer"], bool(row["force"]), row["cause"],
                   row["request_id"], tuple(row["requests"]))


class WorkQueue:
    def __init__(self, state: AsyncStateStore, health: StateHealth | None = None) -> None:
        self.state = state
        # Writes the state refuses (a full disk) are held there and made later.
        self.health = health or StateHealth(state, lambda event, fields, level: None)
        # Layers triggered since the current run took its entries.
        self.changed: set[str] = set()
        self.taken: list[Entry] = []
        self.wakeup = asyncio.Event()
        self._held: dict[str, dict[str, Any]] = {}  # requests not written yet, by id

    async def add(self, layers: list[str], *, force: bool, cause: str,
                  request_id: str | None = None) -> str:
        """Queue ``layers`` as one request; returns its id. When the state refuses
        the write, the request is held in memory and written once it can be."""
        request_id = request_id or new_id("r")
        held = {"id": request_id, "layers": layers, "force": force, "cause": cause,
                "state": "held", "created_at": time.time()}
        self._held[request_id] = held

        async def write() -> None:
            await self.state.work.submit(request_id, layers, force=force, cause=cause)
            self._held.pop(request_id, None)
            self.wakeup.set()

        await self.health.write(f"request {request_id}", write)
        self.changed.update(layers)
        self.wakeup.set()
        return request_id

    def held(self) -> list[dict[str, Any]]:
        """Requests taken but not yet written (the state refuses writes)."""
        return list(self._held.values())

    async def waiting(self) -> list[Entry]:
        return [Entry.from_row(row) for row in await self.state.work.entries(taken=False)]

    async def take(self) -> list[Entry]:
        """Everything waiting, now held by the run about to start (nothing when the
        state refuses the write: the run loop then waits for it)."""
        taken: list[dict[str, Any]] = []

        async def write() -> None:
            taken.extend(await self.state.work.take())

        self.changed = set()
        if not self.health.writable:
            return []
        try:
            await write()
        except Exception as exc:
            if not is_unwritable(exc):
                raise
            self.health.failed("taking the queue", exc)
            return []
        self.taken = [Entry.from_row(row) for row in taken]
        return self.taken

    def superseded(self, lineage: Iterable[str]) -> bool:
        """Whether a layer (given with its ancestors) changed since the run began."""
        return any(layer in self.changed for layer in lineage)

    async def give_back(self, entries: list[Entry]) -> None:
        """A run that could not start (bad input): its entries wait again, unchanged."""
        ids = [e.id for e in entries]

        async def write() -> None:
            await self.state.work.requeue_taken(ids)

        await self.health.write("giving work back", write)
        self.taken = []

    async def finish(self, entries: list[Entry], outcomes: dict[str, dict[str, Any]],
                     deferred: set[str], covered: Callable[[str], Iterable[str]]) -> list[str]:
        """Close a run. Entries whose layer was ``deferred`` (superseded, or stopped
        by a shutdown) wait again with their force and requests; the others are
        done, and each of their requests records the outcomes of the layers it
        covered. Returns the request ids that are now done."""
        again = [e.id for e in entries if e.layer in deferred]
        finished = [e for e in entries if e.layer not in deferred]
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in finished:
            for request in entry.requests:
                seen = results.setdefault(request, {})
                for layer in covered(entry.layer):
                    if layer in outcomes:
                        seen[layer] = outcomes[layer]
        self.taken = []
        done: list[str] = []

        async def write() -> None:
            # One after the other, each idempotent: written again whole if refused.
            if again:
                await self.state.work.requeue_taken(again)
            await self.state.work.finish([e.id for e in finished])
            done.extend(await self.state.work.record_results(results))

        await self.health.write("finishing a run", write)
        return done

    async def request(self, request_id: str) -> dict[str, Any] | None:
        """A request as the API shows it: what was asked, its state, its builds."""
        request = await self.state.work.get_request(request_id)
        if request is None:
            held = self._held.get(request_id)
            return None if held is None else {**held, "why": self.health.error,
                                              "results": {}, "queued": [], "builds": []}
        request["queued"] = [row for row in await self.state.work.entries()
                             if request_id in row["requests"]]
        history = self.state.history
        builds = {b["id"]: b for b in await history.builds(request_id=request_id, limit=1000)}
        for result in request["results"].values():
            build_id = result.get("build_id")
            if build_id and build_id not in builds and (row := await history.get(build_id)):
                builds[build_id] = row
        request["builds"] = sorted(builds.values(), key=lambda b: b["started_at"])
        return request
