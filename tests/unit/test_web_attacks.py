"""The web page under attack, against a stand-in daemon (no browser, no builds):
pages that go away, hostile strings, forged requests, odd token files. One
server per test (they start in milliseconds); the whole file runs in a few
seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator.core.model import WebConfig
from orchestrator.service.web import server as web_server
from orchestrator.service.web.server import WebServer
from tests.web_fakes import FakeSource, catalog_of

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[WebServer, FakeSource]]:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    source = FakeSource(catalog_of(6), tmp_path / "state.db")
    server = WebServer(source, WebConfig(listen=("127.0.0.1", 0), token_file=token))
    await server.start()
    await asyncio.wait_for(server.board.seeded.wait(), 5)
    yield server, source
    source.close()
    await server.stop()


def running_build(source: FakeSource, tmp_path: Path, text: str = "step 1\n") -> str:
    log = tmp_path / "b1.log"
    log.write_text(text)
    source.builds_by_id["b1"] = {"id": "b1", "layer": "base", "outcome": "running",
                                 "started_at": 1.0, "log_path": str(log)}
    return "b1"


async def open_and_leave(where: str, path: str) -> None:
    """A page that reads the first bytes of a stream, then closes its tab."""
    host, port = where.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await reader.read(64)
    writer.close()
    await writer.wait_closed()


# -- streams whose page went away ------------------------------------------------------


async def test_a_stream_whose_page_went_away_is_forgotten_quietly(
    site: tuple[WebServer, FakeSource], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every tab closed on a quiet daemon used to keep its stream (its queue and a
    picture of every node) until the next event: hours, for any number of tabs;
    then each one logged a traceback at error level."""
    monkeypatch.setattr(web_server, "GONE_CHECK_S", 0.1, raising=False)
    server, source = site
    running_build(source, tmp_path)
    caplog.set_level(logging.ERROR)
    for _ in range(20):
        await open_and_leave(server.where, "/events")
        await open_and_leave(server.where, "/events?only=changed")
        await open_and_leave(server.where, "/builds/b1/log")
    for _ in range(50):
        if not server.board._browsers:
            break
        await asyncio.sleep(0.05)
    assert not server.board._browsers, f"{len(server.board._browsers)} streams still held"
    source.publish("trigger_received", layers=["base"])
    source.builds_by_id["b1"]["outcome"] = "built"
    await asyncio.sleep(0.5)
    assert [r.getMessage() for r in caplog.records] == []


async def test_every_answer_carries_the_security_headers(
    site: tuple[WebServer, FakeSource], tmp_path: Path,
) -> None:
    """Streamed answers too: a middleware sets headers after the handler returns,
    when a streamed answer's headers are long gone."""
    server, source = site
    running_build(source, tmp_path, "<html><script>alert(1)</script>\n")
    source.builds_by_id["b1"]["outcome"] = "built"
    async with aiohttp.ClientSession() as http:
        for path in ("/builds/b1/log.txt", "/builds/b1/log", "/events", "/static/app.css",
                     "/nope", "/layers/base", "/graph.svg"):
            async with http.get(server.where + path) as resp:
                headers = resp.headers
                assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), \
                    path
                assert headers.get("X-Content-Type-Options") == "nosniff", path
                assert headers.get("X-Frame-Options") == "DENY", path
