"""CLI verbs that talk to a running daemon over its control socket."""

from __future__ import annotations

import grp
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_NO_DAEMON = 0, 1, 2, 3


class NoDaemon(Exception):
    def __init__(self, socket_path: Path, why: str) -> None:
        self.socket_path = socket_path
        super().__init__(f"no daemon answers on {socket_path}: {why}")


class NoAccess(Exception):
    """The socket is there but this user may not connect: a daemon may well be
    running, so saying "no daemon" would send the user the wrong way."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        super().__init__(f"permission denied: join the group `{socket_group(socket_path)}` "
                         f"to use {socket_path} (group membership starts at the next login)")


def socket_group(path: Path) -> str:
    """The group that may use the socket: the socket's own, else its folder's, else
    the one the shipped units create."""
    for candidate in (path, path.parent):
        try:
            gid = candidate.stat().st_gid
        except OSError:
            continue
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)
    return "orchestrator"


def _unreachable(socket_path: Path, exc: Exception) -> Exception:
    cause = getattr(exc, "os_error", exc)
    if isinstance(cause, PermissionError):
        return NoAccess(socket_path)
    return NoDaemon(socket_path, str(exc))


class Client:
    def __init__(self, socket_path: Path, timeout_s: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                                     timeout=self.timeout)

    async def call(self, method: str, path: str,
                   body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            async with self._session() as session, session.request(
                    method, f"http://orchestrator{path}", json=body) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text)
                except ValueError:
                    return resp.status, text
        except (aiohttp.ClientConnectorError, FileNotFoundError, PermissionError,
                ConnectionError) as exc:
            raise _unreachable(self.socket_path, exc) from None

    async def stream(self, path: str) -> int:
        """Copy a streamed answer (logs, events) to stdout as it arrives."""
        try:
            async with aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as session, \
                    session.get(f"http://orchestrator{path}") as resp:
                if resp.status != 200:
                    body = await resp.text()
                    print(f"orchestrator: {_message(body)}", file=sys.stderr)
                    return EXIT_INPUT if resp.status in (400, 404) else EXIT_REFUSED
                async for chunk in resp.content.iter_any():
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
        except (aiohttp.ClientConnectorError, FileNotFoundError, PermissionError,
                ConnectionError) as exc:
            raise _unreachable(self.socket_path, exc) from None
        return EXIT_OK


def _message(body: Any) -> str:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return str(body).strip()
    return str(body.get("message", body)) if isinstance(body, dict) else str(body)


def exit_for(status: int) -> int:
    if status < 300:
        return EXIT_OK
    if status in (400, 404, 413):
        return EXIT_INPUT
    return EXIT_REFUSED


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = time.time() - ts
    return f"{delta:.0f}s ago" if delta >= 0 else f"in {-delta:.0f}s"


def render_history(builds: list[dict[str, Any]]) -> str:
    lines = [f"{'ID':<12}  {'LAYER':<20} {'OUTCOME':<11} {'STARTED':<19} {'TOOK':>7}  "
             f"{'BUILDER':<12} CAUSE"]
    for b in builds:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["started_at"]))
        took = f"{b['finished_at'] - b['started_at']:.1f}s" if b.get("finished_at") else "-"
        lines.append(f"{b['id']:<12}  {b['layer']:<20} {b['outcome']:<11} {started:<19} "
                     f"{took:>7}  {b.get('builder') or '-':<12} "
                     f"{b.get('cause') or b.get('reason') or ''}")
    return "\n".join(lines)


STATE_WORDS = {"up_to_date": "up to date", "stale": "stale", "queued": "queued",
               "building": "building", "failed": "FAILED", "skipped": "skipped"}


def describe_layer(layer: dict[str, Any], now: float) -> str:
    state = layer.get("state", "up_to_date")
    if state == "building":
        since = layer.get("since") or now
        return f"building for {now - since:.0f}s on {layer.get('builder')}"
    if state == "stale":
        return f"stale: {layer.get('why')}"
    if state in ("failed", "skipped"):
        return f"{STATE_WORDS[state]}: {layer.get('error') or ''}".rstrip(": ")
    return str(STATE_WORDS.get(state, state))


def render_tree(layers: list[dict[str, Any]], now: float | None = None) -> str:
    """The hierarchy with each layer's state, one line a layer."""
    now = time.time() if now is None else now
    by_id = {layer["layer"]: layer for layer in layers}
    kids: dict[str | None, list[str]] = {}
    for layer in layers:
        parent = layer["parent"] if layer["parent"] in by_id else None
        kids.setdefault(parent, []).append(layer["layer"])
    rows: list[tuple[str, str]] = []

    def walk(lid: str, prefix: str, last: bool, top: bool) -> None:
        rows.append((lid if top else f"{prefix}{'└── ' if last else '├── '}{lid}",
                     describe_layer(by_id[lid], now)))
        below = kids.get(lid, [])
        child_prefix = "" if top else prefix + ("    " if last else "│   ")
        for i, child in enumerate(below):
            walk(child, child_prefix, i == len(below) - 1, False)

    for root in kids.get(None, []):
        walk(root, "", True, True)
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label:<{width}}  {state}" for label, state in rows)


def render_full_status(status: dict[str, Any], layers: list[dict[str, Any]]) -> str:
    return "\n".join([status_head(status), "", render_tree(layers), *status_tail(status)])


def status_head(status: dict[str, Any]) -> str:
    return (f"orchestrator {status['phase']} (pid {status['pid']}, up "
            f"{status['uptime_s']:.0f}s, backend {status['backend']['name']}"
            + (f", backend error: {status['backend']['error']}" if status["backend"]["error"]
               else "") + f"), {len(status.get('queue') or [])} queued")


def status_tail(status: dict[str, Any]) -> list[str]:
    """The engines (when there is more than one, or one is down) and the upstream watchers."""
    lines: list[str] = []
    builders = status.get("builders") or []
    if len(builders) > 1 or any(b["state"] != "up" for b in builders):
        lines += ["", "builders"]
        for b in builders:
            lines.append(f"  {b['name']:<16} {b['state']:<5} {b['running']}/{b['slots']} busy, "
                         f"{b['builds']} builds" + (f"; {b['error']}" if b.get("error") else ""))
    ups = status.get("upstreams") or {}
    if ups:
        lines += ["", "upstream watchers"]
        for name, up in ups.items():
            state = f"error: {up['error']}" if up.get("error") else \
                f"{up.get('tag')} {str(up.get('digest'))[:19]}"
            lines.append(f"  {name:<16} {state}; checked {_ago(up.get('last_check'))}, "
                         f"next poll {_ago(up.get('next_check'))}")
    hooks = [h for h in status.get("webhooks") or [] if h["pending"] or h["last_error"]]
    if hooks:
        lines += ["", "webhooks"]
        for h in hooks:
            lines.append(f"  {h['target']:<16} {h['pending']} pending, {h['delivered']} "
                         "delivered" + (f"; last error {_ago(h['last_error_at'])}: "
                                        f"{h['last_error']}" if h["last_error"] else ""))
    lines += package_lines(status.get("packages") or {})
    return lines


def package_lines(packages: dict[str, Any]) -> list[str]:
    """Package indexes, pending fixes with their window, fixes not applied or waiting."""
    if not packages.get("enabled"):
        return []
    lines = ["", f"package fixes (window {packages['window_s']:g}s)"]
    for index in packages.get("indexes") or []:
        state = f"error: {index['error']}" if index.get("error") else \
            f"{index.get('suite')} {index.get('date') or ''}".rstrip()
        lines.append(f"  {index['source']}: {state}; checked {_ago(index.get('checked_at'))}"
                     f", next poll in {index.get('next_in_s', 0):.0f}s")
    for row in packages.get("pending") or []:
        when = "rebuild queued" if row.get("triggered") else \
            ("urgent: now" if row.get("urgent") else
             f"window closes {_ago(row.get('window_closes_at'))}")
        lines.append(f"  {row['layer']}: {row['reason']}; {when}")
    for row in packages.get("not_applied") or []:
        for fix in row["fixes"]:
            lines.append(f"  {row['layer']}: {fix['message']}")
    for row in packages.get("waiting") or []:
        lines.append(f"  {row['reason']}: waiting on {row['layer']}'s refresh "
                     f"({', '.join(row['layers'])} could add: {row['hint']})")
    return lines
