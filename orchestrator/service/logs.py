"""structlog set up once, at the edge: JSON lines when not on a TTY, console otherwise."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from orchestrator.core.redact import redact_fields


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop secret-looking fields and embedded credentials."""
    return redact_fields(event)


# syslog(3) priorities, which journald reads from a "<N>" line prefix.
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4,
              "info": 6, "debug": 7}


def writes_to_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream systemd connected us to: the
    service manager sets JOURNAL_STREAM to that stream's device and inode, so a
    stdout redirected elsewhere (a file, a pipe to another tool) is told apart."""
    env = os.environ if env is None else env
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not device:
        return False
    try:
        found = os.fstat(stream.fileno())
        return (found.st_dev, found.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False  # a stream with no file behind it (a live view's) is no journal


class JournalPriority:
    """Wraps a renderer: each line starts with its level's syslog priority, so
    journald stores ``"level": "error"`` as PRIORITY=3 (``journalctl -p err``)
    and strips the prefix from the message."""

    def __init__(self, render: Any) -> None:
        self.render = render

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        priority = PRIORITIES.get(str(event.get("level", name)).lower(), 6)
        return f"<{priority}>{self.render(logger, name, event)}"


def configure(stream: TextIO | None = None, level: int = logging.INFO,
              json: bool | None = None, journal: bool | None = None) -> None:
    stream = stream or sys.stdout
    as_json = json if json is not None else not stream.isatty()
    journal = writes_to_journal(stream) if journal is None else journal
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if as_json
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    if journal:
        renderer = JournalPriority(renderer)
    # Redacted last, after a traceback became text: exception messages carry URLs.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Library loggers (aiohttp, asyncio) go through the same renderer.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
