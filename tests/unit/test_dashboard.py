"""Every metric and log field the dashboard uses exists in the code."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from orchestrator.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "dashboards" / "orchestrator.json").read_text())
# Fields structlog adds to every line.
LOG_BASE_FIELDS = {"event", "level", "timestamp"}


def expressions() -> list[str]:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    return exprs


def exposed_metric_names() -> set[str]:
    metrics = Metrics()
    # One sample of everything, so every series (histogram buckets too) is rendered.
    metrics.builds.labels("l", "built").inc()
    metrics.duration.labels("l").observe(1)
    metrics.upstream_checks.labels("u", "ok").inc()
    metrics.registry_request("r", "HEAD", "200")
    metrics.last_success.labels("l").set(1)
    text = metrics.render().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_every_metric_in_the_dashboard_is_exposed() -> None:
    exposed = exposed_metric_names()
    used = {name for expr in expressions() for name in re.findall(r"\borchestrator_\w+", expr)}
    assert used, "the dashboard uses no metrics?"
    assert used <= exposed, used - exposed


def logged_events_and_fields() -> tuple[set[str], set[str]]:
    """Event names and field names from every publish()/on_event() call in the code."""
    events: set[str] = set()
    fields: set[str] = set(LOG_BASE_FIELDS)
    for path in (ROOT / "orchestrator").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("publish", "on_event") and node.args and \
                    isinstance(node.args[0], ast.Constant):
                events.add(node.args[0].value)
            if isinstance(node, ast.Dict):  # the field dicts handed to those calls
                fields.update(k.value for k in node.keys
                              if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return events, fields


def test_every_log_event_and_field_in_the_dashboard_is_logged() -> None:
    events, fields = logged_events_and_fields()
    loki = [e for e in expressions() if "| json" in e]
    assert loki, "the dashboard has no log panels?"
    used_events = {m for e in loki for m in re.findall(r'event="(\w+)"', e)}
    used_fields = {m for e in loki for m in re.findall(r'\|\s*(\w+)\s*=~?"', e)}
    used_fields |= {m for e in loki for m in re.findall(r"\{\{\.(\w+)\}\}", e)}
    used_fields |= {m for e in loki for m in re.findall(r"unwrap (\w+)", e)}
    used_fields |= {m for e in loki for m in re.findall(r"by \((\w+)\)", e)}
    assert used_events <= events, used_events - events
    assert used_fields <= fields, used_fields - fields
    assert {"build_finished", "trigger_received", "upstream_changed"} <= used_events
