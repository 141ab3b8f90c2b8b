"""Credentials never leave through a side door: a URL's ``user:token@`` and bearer
tokens are taken out of events (the stream, the log line and the webhooks alike),
logged exception text, webhook bodies, upstream errors and values, and the
``{upstream.NAME.url}`` a build receives."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from orchestrator.core.errors import UpstreamError
from orchestrator.core.model import ResolvedUpstream, UpstreamSpec
from orchestrator.core.redact import public_url, redact_fields, redact_text
from orchestrator.core.templates import upstream_values
from orchestrator.service import logs
from orchestrator.service.events import EventBus
from orchestrator.service.webhooks import payload_for

CANARY = "glpat-canary-5e1f"
REMOTE = f"https://ci:{CANARY}@git.example/platform/pyenv.git"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.mark.parametrize(("text", "expected"), [
    (REMOTE, "https://git.example/platform/pyenv.git"),
    ("https://ghp_abc@github.com/o/x.git", "https://github.com/o/x.git"),  # a token as user
    ("http://u:p@ss@host:8080/x", "http://host:8080/x"),  # an unencoded @ in the password
    ("HTTPS://U:P@HOST/x", "HTTPS://HOST/x"),
    ("git ls-remote https://a:b@h/x.git: fatal: 'https://c:d@h/y' not found",
     "git ls-remote https://h/x.git: fatal: 'https://h/y' not found"),
    ("https://mirror.example/simple?access_token=abc&x=1",
     "https://mirror.example/simple?access_token=[redacted]&x=1"),
    ("Authorization: Bearer abc.def", "Authorization: Bearer [redacted]"),
    # Not credentials: an ssh login name, scp-like remotes, mail addresses, digests.
    ("ssh://git@github.com/pyenv/pyenv.git", "ssh://git@github.com/pyenv/pyenv.git"),
    ("git@github.com:pyenv/pyenv.git", "git@github.com:pyenv/pyenv.git"),
    ("ask ops@example.com about https://host/x", "ask ops@example.com about https://host/x"),
    ("reg:5000/base/os@sha256:" + "a" * 64, "reg:5000/base/os@sha256:" + "a" * 64),
    ("https://host/path@v1.2", "https://host/path@v1.2"),
])
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_ssh_with_a_password_is_a_credential() -> None:
    assert public_url("ssh://git:hunter2@host/x.git") == "ssh://host/x.git"


def test_nested_fields_are_redacted() -> None:
    fields: dict[str, Any] = {"event": "x", "api_token": "t",
                              "upstreams": [{"uri": REMOTE, "password": "p"}]}
    redact_fields(fields)
    assert fields == {"event": "x", "api_token": "[redacted]",
                      "upstreams": [{"uri": "https://git.example/platform/pyenv.git",
                                     "password": "[redacted]"}]}


async def test_the_event_stream_listeners_and_log_line_carry_the_same_redacted_facts() -> None:
    stream = io.StringIO()
    logs.configure(stream, json=True)
    bus = EventBus()
    heard: list[dict[str, Any]] = []
    bus.listeners.append(lambda event, fields, level: heard.append(fields))
    given = {"upstream": "pyenv", "error": f"upstream pyenv: git ls-remote {REMOTE}: refused",
             "details": {"remote": REMOTE}, "auth": "Basic dXNlcjpwYXNz"}
    async with bus.subscribe() as queue:
        bus.publish("upstream_check_failed", given, "warning")
        record = await asyncio.wait_for(queue.get(), 1)
    assert record is not None
    for seen in (record, heard[0], json.loads(stream.getvalue())):
        text = json.dumps(seen)
        assert CANARY not in text and "dXNlcjpwYXNz" not in text
        assert "https://git.example/platform/pyenv.git" in seen["error"]
        assert seen["details"] == {"remote": "https://git.example/platform/pyenv.git"}
    assert REMOTE in given["error"]  # the caller's own dict is left alone


def test_logged_exception_text_is_redacted() -> None:
    stream = io.StringIO()
    logs.configure(stream, json=True)
    try:
        raise RuntimeError(f"cannot reach {REMOTE}")
    except RuntimeError:
        structlog.get_logger("t").exception("webhook_loop_failed")
        logging.getLogger("aiohttp.client").exception("library failure at %s", REMOTE)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert "RuntimeError" in line["exception"]
        assert CANARY not in json.dumps(line)


def test_a_webhook_body_carries_no_credential(tmp_path: Path) -> None:
    log = tmp_path / "b-1.log"
    log.write_text(f"STEP 3/4: RUN git clone\nfatal: could not read from {REMOTE}\n")
    kind, body = payload_for("build_finished", {
        "outcome": "failed", "layer": "pyenv", "build_id": "b-1", "log": str(log),
        "error": f"clone of {REMOTE} failed", "trigger": "manual"}) or ("", {})
    assert kind == "build_failed"
    assert CANARY not in json.dumps(body)
    assert "https://git.example/platform/pyenv.git" in body["log_tail"]


def test_upstream_errors_and_values_carry_no_credential() -> None:
    error = UpstreamError("pyenv", f"git ls-remote {REMOTE}: fatal: Authentication failed")
    assert CANARY not in str(error) and "git.example" in str(error)
    # Made by a poll, or from a row an older version stored: the same.
    value = ResolvedUpstream("pyenv", REMOTE, "a" * 40, "v2.5.1")
    assert value.ref == "https://git.example/platform/pyenv.git"
    assert ResolvedUpstream("os", "reg/os@sha256:" + "b" * 64, "sha256:" + "b" * 64,
                            "1").ref == "reg/os@sha256:" + "b" * 64
    values = upstream_values("pyenv", "v2.5.1", "a" * 40, REMOTE)
    assert values["upstream.pyenv.url"] == "https://git.example/platform/pyenv.git"


async def test_a_failing_git_remote_is_reported_without_its_credential() -> None:
    from orchestrator.registry.client import RegistryClient
    from orchestrator.registry.upstream import resolve

    spec = UpstreamSpec("pyenv", "git", git=f"http://ci:{CANARY}@127.0.0.1:9/pyenv.git",
                        track="semver")
    async with RegistryClient() as client:
        with pytest.raises(UpstreamError) as caught:
            await resolve(spec, client)
    assert CANARY not in str(caught.value)
    assert "http://127.0.0.1:9/pyenv.git" in str(caught.value)
