"""The daemon's package watch: "patched when the distribution is" (DESIGN §2b).

- The package indexes that could offer a fix for a package one of the layers
  installed are polled (``service.indexpollers``).
- After each index change, and after each run (new images, new package records),
  the fix decision is made again (``core.packagefix.find_fixes``).
- A layer with pending fixes gets a window: fixes that arrive within ``window`` of
  its first make one rebuild, triggered when the window closes (an ``urgent``
  severity closes it at once). The trigger's cause names the fix; the decide step
  pins the fixed versions in the key and builds without the step cache.
- After a run, each layer built against a fix whose image still lacks it gets one
  ``fix_not_applied`` (with the reason): its key covers the fix, so nothing is
  triggered again until the index offers a newer version.

Everything here is an observer: a failing index, a record that cannot be read or
a full disk is reported, and builds go on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import structlog

from orchestrator.build.attest import Ancestor, Attestor
from orchestrator.build.packagefixes import (
    FixView,
    fix_json,
    fix_view,
    layer_packages,
    plan_notes,
    policy_of,
    read_images,
    watched,
)
from orchestrator.build.packagestore import PACKAGES_DB, PackageStore
from orchestrator.build.state import AsyncStateStore, LayerRecord
from orchestrator.catalog.layers import dockerfile_texts
from orchestrator.core import graph
from orchestrator.core.errors import InputError
from orchestrator.core.imageref import parse_repository
from orchestrator.core.packagefix import Fix, check_applied, describe, rebuild_due, retry_pin
from orchestrator.core.packages import PackageRecord
from orchestrator.registry.indexwatch import IndexPoller
from orchestrator.service.events import EventBus
from orchestrator.service.indexpollers import IndexPollers
from orchestrator.service.metrics import Metrics
from orchestrator.service.ports import Loaded, Refused

log = structlog.get_logger("orchestrator.packages")
UPSTREAM = "upstream:"


class PackageWatch:
    def __init__(self, loaded: Loaded, state: AsyncStateStore, bus: EventBus, metrics: Metrics,
                 *, trigger: Callable[[list[str], str], Awaitable[Any]],
                 busy: Callable[[], set[str]],
                 phase: Callable[[], str], on_change: Callable[[], None],
                 attestor: Callable[[], Attestor | None] = lambda: None) -> None:
        self.loaded = loaded
        self.state = state
        self.bus = bus
        self.metrics = metrics
        self.trigger = trigger  # queue layers with a cause (Triggers.trigger)
        self.busy = busy  # layers building now
        self.phase = phase
        self.on_change = on_change  # what status shows changed
        self.attestor = attestor  # reads a package record an image lacks (connections')
        self.view = FixView()
        self.windows: dict[str, float] = {}  # layer -> when its first pending fix was seen
        self.triggered: dict[str, frozenset[tuple[str, str]]] = {}  # layer -> pins asked for
        # layer -> when the window it was triggered for opened: kept with the open
        # windows, so a restart before that build ran triggers it again at once.
        self.triggered_at: dict[str, float] = {}
        self.not_applied: dict[str, list[dict[str, Any]]] = {}  # layer -> the last report
        self.stuck_since: dict[str, float] = {}  # layer -> when a fix was first not applied
        # (layer, pin) -> the index snapshot a build did not take it from, and whether
        # another build may (a lagging mirror; not a pin or a hold).
        self.stuck_at: dict[tuple[str, str], tuple[str, bool]] = {}
        self._store: PackageStore | None = None
        self._records: dict[str, PackageRecord] = {}  # by image digest: read once
        self._indexes: IndexPollers | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()  # the timer looks again
        self._refresh_wanted = asyncio.Event()
        self._built: set[str] = set()  # layers built since the last run's end
        self._checked: set[str] = set()  # layers built whose fixes are checked next refresh
        self._polling = False
        self._lock = asyncio.Lock()
        self._saving: set[asyncio.Future[None]] = set()  # windows being written
        self._unread: set[str] = set()  # image digests whose record could not be read
        metrics.package_fix_oldest.set_function(self.oldest_unapplied_s)

    @property
    def enabled(self) -> bool:
        config = self.loaded.config
        return config.packages is not None and config.registry is not None

    @property
    def pollers(self) -> dict[str, IndexPoller]:
        return self._indexes.pollers if self._indexes is not None else {}

    def fixes(self) -> FixView | None:
        """What the decide step keys with (None: package fixes are not watched)."""
        return self.view if self.enabled else None

    # -- lifetime -------------------------------------------------------------

    async def start(self, *, polling: bool) -> None:
        """After startup's reconcile is queued: the kept index states, the decision
        over them, then the pollers (``polling`` False in ``run --once``)."""
        self._polling = polling
        if not self.enabled:
            return
        try:
            await self._start()
        except Exception as exc:  # an observer: the daemon goes on without it
            self.bus.publish("packages_unavailable", {"error": repr(exc)}, "error")

    async def _start(self) -> None:
        store = self._open_store()
        if store is None:
            return
        self._indexes = await IndexPollers.open(
            self.loaded.config.state_dir / "tmp" / "package-indexes", store, self.bus,
            on_index_change=self._refresh_wanted.set, on_change=self.on_change)
        self.windows = await asyncio.to_thread(store.windows)
        await self.refresh(read_missing=False)
        self._refresh_wanted.set()
        self._stop = asyncio.Event()
        self._own("packages-refresh", self._refresher())
        if self._polling:  # run --once has no windows: its reconcile takes every fix
            self._own("packages-timer", self._timer())

    async def configure(self) -> None:
        """A reload: new settings (or [packages] added or removed)."""
        if self._indexes is not None:
            await self._indexes.stop()
        if not self.enabled:
            self.view = FixView()
            self._update_metrics()
            return
        if self._indexes is None:
            await self.start(polling=self._polling)
            return
        await self.refresh()

    async def close(self) -> None:
        self._stop.set()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        await asyncio.gather(*self._saving, return_exceptions=True)
        if self._indexes is not None:
            await self._indexes.close()
            self._indexes = None

    def _own(self, name: str, coro: Any) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._tasks.pop(name, None)
                               if self._tasks.get(name) is t else None)

    def _open_store(self) -> PackageStore | None:
        if self._store is None:
            config = self.loaded.config
            try:
                self._store = PackageStore(config.state_dir / PACKAGES_DB,
                                           config.daemon.socket_group)
            except Exception as exc:
                self.bus.publish("packages_unavailable", {"error": repr(exc)}, "error")
                return None
        return self._store

    # -- the decision ---------------------------------------------------------

    async def refresh(self, *, read_missing: bool = True) -> None:
        """Read the layers' package records, poll what they name, decide again.
        ``read_missing``: read from the registry the records images lack (slow: not
        at start, where it would hold up READY; the refresher does it next)."""
        if not self.enabled or self._indexes is None:
            return
        async with self._lock:
            store = self._open_store()
            if store is None:
                return
            catalog = self.loaded.catalog
            records = await self.state.records.all(list(catalog.layers))
            try:
                texts = await asyncio.to_thread(dockerfile_texts, catalog)
            except InputError:
                texts = {}
            try:
                images = await asyncio.to_thread(read_images, store, records, self._records)
            except Exception as exc:  # a cache: report, keep the last decision
                self.bus.publish("packages_unreadable", {"error": repr(exc)}, "warning")
                return
            if read_missing and await self._read_missing(records, images):
                images = await asyncio.to_thread(read_images, store, records, self._records)
            config = self.loaded.config.packages
            assert config is not None
            layers = layer_packages(catalog, images, texts)
            self._indexes.sync(watched(config, images, layers), config.poll_s,
                               self._stop if self._polling else None)
            view = fix_view(config, catalog, records, images, self._indexes.snapshots(),
                            texts)
            self.view = replace(view, retries=self._retries(view))
            self._check_applied(images, texts, {lid: r.digest for lid, r in records.items()})
            self._update_windows()
            self._release()
            self._update_metrics()
        self._wakeup.set()
        self.on_change()

    async def _read_missing(self, records: dict[str, LayerRecord],
                            images: dict[str, list[PackageRecord]]) -> bool:
        """Layers whose current image has no package record (built before [packages],
        or packages.db was deleted): read it from the registry, as the SBOM step would,
        so they are watched now rather than from their next build. Parents first, so a
        child's read starts from its parent's record. True when any was read."""
        attestor = self.attestor()
        if attestor is None:
            return False
        catalog = self.loaded.catalog
        read = False
        parents = {k: v.parent for k, v in catalog.layers.items()}
        for lid in graph.topological_order(parents):
            record = records.get(lid)
            if record is None or lid in images or record.platform_digests or \
                    record.digest in self._unread:
                continue  # a multi-platform layer is watched from its next build
            try:
                await self._read_one(attestor, lid, record, records)
                read = True
            except Exception as exc:  # reported once; its next build makes the record
                self._unread.add(record.digest)
                self.bus.publish("package_record_unreadable", {
                    "layer": lid, "digest": record.digest,
                    "error": f"{type(exc).__name__}: {exc}"}, "warning")
        return read

    async def _read_one(self, attestor: Attestor, lid: str, record: LayerRecord,
                        records: dict[str, LayerRecord]) -> None:
        layer = self.loaded.catalog.layers[lid]
        repo = parse_repository(record.ref.split("@", 1)[0])
        subject = await attestor.client.get_manifest(repo, record.digest)
        if subject is None:
            raise LookupError(f"{record.ref} is not in the registry")
        parent = records.get(layer.parent) if layer.parent else None
        if parent is not None:
            below = Ancestor(parent.layer, parent.ref.split("@", 1)[0],
                             record.inputs.parent_digest)
        else:
            spec = self.loaded.catalog.upstreams.get(layer.upstream or "")
            if spec is None or spec.image is None:
                raise LookupError(f"{lid}: what it stands on is not known")
            below = Ancestor(UPSTREAM + spec.name, spec.image, record.inputs.parent_digest)
        work = self.loaded.config.state_dir / "builds" / f"records-{record.digest[7:19]}"
        try:
            await attestor.record(repo, subject, lid, [below], work)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    def _retries(self, view: FixView) -> dict[str, tuple[tuple[str, str], ...]]:
        """Fixes a build did not take for a reason another build may not have (a mirror
        that lagged), to try again now that their index changed: once per change."""
        out: dict[str, tuple[tuple[str, str], ...]] = {}
        for lid in view.report.fixes:
            wanted = []
            for fix in view.not_applied(lid):
                snapshot, retryable = self.stuck_at.setdefault((lid, fix.pin[0]),
                                                               (fix.snapshot, False))
                if retryable and fix.snapshot != snapshot:
                    wanted.append(retry_pin(fix, fix.snapshot))
            if wanted:
                out[lid] = tuple(wanted)
        return out

    def _check_applied(self, images: dict[str, list[PackageRecord]], texts: dict[str, str],
                       digests: dict[str, str]) -> None:
        """Layers built since the last refresh: fixes their key covers that their image
        lacks. One report per build; never a trigger."""
        checked, self._checked = self._checked, set()
        for lid in sorted(checked):
            stuck = self.view.not_applied(lid)
            if not stuck:
                self.not_applied.pop(lid, None)
                self.stuck_since.pop(lid, None)
                continue
            found = images.get(lid, [])
            reports = []
            for record in found:
                for item in check_applied(stuck, record.installed(), held=record.held(),
                                          texts=record.texts(), dockerfile=texts.get(lid)):
                    self.stuck_at[(lid, item.fix.pin[0])] = (item.fix.snapshot, item.retryable)
                    reports.append({**fix_json(item.fix), "found": item.found,
                                    "why": item.reason, "message": item.describe(),
                                    "retried_when_the_index_changes": item.retryable})
            if not reports:
                continue
            self.not_applied[lid] = reports
            self.stuck_since.setdefault(lid, time.time())
            self.bus.publish("fix_not_applied", {"layer": lid, "fixes": reports,
                                                 "digest": digests.get(lid)}, "warning")

    def _update_windows(self) -> None:
        now = time.time()
        pending = self.view.pending_layers()
        before = (dict(self.windows), dict(self.triggered_at))
        for lid, fixes in pending.items():
            pins = frozenset(f.pin for f in fixes)
            if lid in self.triggered and pins <= self.triggered[lid]:
                continue  # asked for already: the build takes them in
            self.windows.setdefault(lid, now)
        for lid in list(self.windows):
            if lid not in pending:
                del self.windows[lid]
        for lid in list(self.triggered):
            if lid not in pending:
                del self.triggered[lid]
                self.triggered_at.pop(lid, None)
        if (self.windows, self.triggered_at) != before:
            self._keep_windows()

    def _release(self) -> None:
        """What the decide step may pin: the fixes of layers whose window closed (in
        ``run --once``, every layer's: it reconciles and exits, no window ever closes)."""
        self.view = replace(self.view, released=frozenset(self.triggered)
                            if self._polling else None)

    def _keep_windows(self) -> None:
        store, windows = self._store, {**self.triggered_at, **self.windows}
        if store is None:
            return

        def save() -> None:
            try:
                store.save_windows(windows)
            except Exception as exc:  # a restart reopens them: nothing is lost but time
                log.warning("packages_windows_not_kept", error=repr(exc))

        task = asyncio.ensure_future(asyncio.to_thread(save))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    def _update_metrics(self) -> None:
        gauge = self.metrics.package_fixes_pending
        pending = self.view.pending_layers() if self.enabled else {}
        for lid in self.loaded.catalog.layers:
            gauge.labels(lid).set(len(pending.get(lid, ())))

    def oldest_unapplied_s(self) -> float:
        """Age of the oldest fix a layer still lacks (pending, or not applied)."""
        since = [*self.windows.values(), *self.stuck_since.values()]
        return round(time.time() - min(since), 3) if since else 0.0

    # -- the window -----------------------------------------------------------

    async def _timer(self) -> None:
        while not self._stop.is_set():
            self._wakeup.clear()
            delay = await self._fire_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _fire_due(self) -> float:
        """Trigger the layers whose window closed; the seconds until the next closes."""
        config = self.loaded.config.packages
        if config is None or self.phase() != "ready":
            return 5.0
        policy = policy_of(config)
        now = time.time()
        pending = self.view.pending_layers()
        busy = self.busy()
        next_in = 3600.0
        for lid, opened in sorted(self.windows.items(), key=lambda kv: kv[1]):
            fixes = pending.get(lid)
            if not fixes:
                continue
            if not rebuild_due(opened, now, fixes, policy):
                next_in = min(next_in, opened + policy.window_s - now)
                continue
            if lid in busy and lid not in self.triggered:
                # Building now, decided without them: look again when it is done (a
                # trigger while it is only queued merges into it).
                next_in = min(next_in, 1.0)
                continue
            await self._rebuild(lid, fixes)
        return max(0.05, next_in)

    async def _rebuild(self, lid: str, fixes: tuple[Fix, ...]) -> None:
        cause = "package fix: " + describe(fixes)
        parents = {k: v.parent for k, v in self.loaded.catalog.layers.items()}
        below = sorted(graph.descendants(parents, [lid]) - {lid})
        # Released before the trigger: the run it starts keys with these fixes.
        self.triggered[lid] = frozenset(f.pin for f in fixes)
        self._release()
        try:
            await self.trigger([lid], cause)
        except (Refused, InputError) as exc:
            self.triggered.pop(lid, None)
            self._release()
            self.bus.publish("package_fix_deferred", {"layer": lid, "error": str(exc)},
                             "warning")
            return
        self.triggered_at[lid] = self.windows.pop(lid, time.time())
        self._keep_windows()
        self.bus.publish("package_fix", {
            "layer": lid, "reason": cause, "fixes": [fix_json(f) for f in fixes],
            "rebuilds": [lid, *below],
            "indexes": [{"suite": i.suite, "url": i.url, "digest": i.digest, "date": i.date}
                        for i in self.view.indexes(fixes)]}, "info")

    # -- after runs -----------------------------------------------------------

    def notice(self, event: str, fields: dict[str, Any], level: str = "info") -> None:
        """An event bus listener: built layers are checked after their run."""
        if event == "build_finished" and fields.get("outcome") == "built":
            layer = fields.get("layer")
            if isinstance(layer, str):
                self._built.add(layer)
        elif event == "run_finished" and self.enabled:
            self._checked |= self._built
            self._built = set()
            self._refresh_wanted.set()

    async def _refresher(self) -> None:
        """One refresh for any number of changes since the last."""
        while not self._stop.is_set():
            await self._refresh_wanted.wait()
            self._refresh_wanted.clear()
            try:
                await self.refresh()
            except Exception as exc:
                log.error("packages_refresh_failed", error=repr(exc), exc_info=exc)

    # -- what status shows ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        config = self.loaded.config.packages
        if not self.enabled or config is None:
            return {"enabled": False}
        pending = self.view.pending_layers()
        rows = []
        for lid, fixes in sorted(pending.items()):
            opened = self.windows.get(lid)
            rows.append({"layer": lid, "reason": "package fix: " + describe(fixes),
                         "fixes": [fix_json(f) for f in fixes],
                         "window_opened_at": opened,
                         "window_closes_at": opened + config.window_s if opened else None,
                         "urgent": any(f.severity in config.urgent for f in fixes),
                         "triggered": lid in self.triggered})
        notes = plan_notes(self.view, self.loaded.catalog)
        return {
            "enabled": True, "window_s": config.window_s, "poll_s": config.poll_s,
            "only": config.only,
            "indexes": self._indexes.status() if self._indexes is not None else [],
            "pending": rows,
            "not_applied": [{"layer": lid, "fixes": reports}
                            for lid, reports in sorted(self.not_applied.items())],
            "waiting": [n for n in notes if n["kind"] == "waiting"],
            "oldest_unapplied_s": self.oldest_unapplied_s(),
        }
