"""Prometheus metrics for dashboards. Labels are layers, outcomes and
upstreams: bounded sets, never build ids."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from orchestrator import __version__

# Builds take seconds to an hour.
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.builds = Counter("orchestrator_builds", "Layer builds by outcome",
                              ["layer", "outcome"], registry=self.registry)
        self.platform_builds = Counter("orchestrator_platform_builds",
                                       "Images built per platform by outcome",
                                       ["layer", "platform", "outcome"], registry=self.registry)
        self.duration = Histogram("orchestrator_build_duration_seconds",
                                  "Builder time per layer build", ["layer"],
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.running = Gauge("orchestrator_builds_running", "Builds running now",
                             registry=self.registry)
        self.queue_depth = Gauge("orchestrator_queue_depth", "Layers waiting to be built",
                                 registry=self.registry)
        self.upstream_checks = Counter("orchestrator_upstream_checks",
                                       "Upstream polls by result", ["upstream", "result"],
                                       registry=self.registry)
        self.last_success = Gauge("orchestrator_last_success_timestamp_seconds",
                                  "When each layer last built or was confirmed up to date",
                                  ["layer"], registry=self.registry)
        self.registry_requests = Counter("orchestrator_registry_requests",
                                         "Requests to registries by method and status code",
                                         ["registry", "method", "code"],
                                         registry=self.registry)
        self.state_writable = Gauge("orchestrator_state_writable",
                                    "1 when the state database takes writes, 0 while it "
                                    "refuses them (a full disk): intents are held meanwhile",
                                    registry=self.registry)
        self.state_writable.set(1)
        self._counted: set[str] = set()  # layers whose outcome an event counted this run
        # Per [[notify]] target (its name, else its URL's host). result: failed (an
        # attempt), and how a delivery ended: delivered, gave_up (attempts or age
        # spent), dropped (target removed, event unsubscribed, queue full).
        self.webhooks = Counter("orchestrator_webhook_deliveries",
                                "Webhook attempts and deliveries by target and result",
                                ["target", "result"], registry=self.registry)
        self.webhooks_pending = Gauge("orchestrator_webhook_pending",
                                      "Webhook deliveries waiting per target", ["target"],
                                      registry=self.registry)
        # Package fixes (service/packagewatch.py): per layer, the fixes its next build
        # takes in; and how long the oldest fix a layer lacks has waited.
        self.package_fixes_pending = Gauge("orchestrator_package_fixes_pending",
                                           "Package fixes pending per layer", ["layer"],
                                           registry=self.registry)
        self.package_fix_oldest = Gauge("orchestrator_package_fix_oldest_unapplied_seconds",
                                        "Age of the oldest package fix a layer lacks "
                                        "(pending, or not applied)", registry=self.registry)
        info = Info("orchestrator_build", "Version of the orchestrator", registry=self.registry)
        info.info({"version": __version__})

    def build_event(self, event: str, fields: dict[str, Any]) -> None:
        """Count each build when it finishes, not when its run ends: a cascade that
        compiles CPython for an hour shows on the dashboards as it goes."""
        layer = fields.get("layer")
        if not isinstance(layer, str):
            return
        if event == "build_started":
            self.running.inc()
        elif event == "build_finished":
            self.running.dec()
            outcome = str(fields.get("outcome", "unknown"))
            self.builds.labels(layer, outcome).inc()
            self._counted.add(layer)
            if outcome == "built":
                self.last_success.labels(layer).set(time.time())
            for platform in fields.get("platforms") or ():
                self.platform_builds.labels(layer, platform, outcome).inc()
            if "duration_s" in fields:
                self.duration.labels(layer).observe(fields["duration_s"])
        elif event == "layer_up_to_date":
            self.builds.labels(layer, "up_to_date").inc()
            self._counted.add(layer)
            self.last_success.labels(layer).set(time.time())

    def run_outcome(self, layer: str, outcome: str) -> None:
        """At a run's end: the outcomes no build event counted (skipped, superseded,
        a failure before any build started)."""
        if layer in self._counted:
            self._counted.discard(layer)
            return
        self.builds.labels(layer, outcome).inc()

    def registry_request(self, registry: str, method: str, code: str) -> None:
        self.registry_requests.labels(registry, method, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
