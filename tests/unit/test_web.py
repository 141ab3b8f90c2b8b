"""The web page's server against a stand-in daemon (no browser, no builds):
pages, live node changes over SSE, the log stream, and who may act."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.core.errors import InputError
from orchestrator.core.model import WebConfig
from orchestrator.service.web.server import WebServer
from tests.web_fakes import FakeSource, catalog_of

TOKEN = "s3cret-token-0123456789abcdef"


async def started(tmp_path: Path, token: bool) -> tuple[WebServer, FakeSource]:
    token_file = None
    if token:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
    source = FakeSource(catalog_of(6), tmp_path / "state.db")
    server = WebServer(source, WebConfig(listen=("127.0.0.1", 0), token_file=token_file))
    await server.start()
    await asyncio.wait_for(server.board.seeded.wait(), 5)
    return server, source


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[tuple[WebServer, FakeSource]]:
    server, source = await started(tmp_path, token=True)
    yield server, source
    source.close()
    await server.stop()


@pytest.fixture
async def readonly(tmp_path: Path) -> AsyncIterator[tuple[WebServer, FakeSource]]:
    server, source = await started(tmp_path, token=False)
    yield server, source
    source.close()
    await server.stop()


async def test_the_graph_page_has_every_layer_and_only_local_assets(
    web: tuple[WebServer, FakeSource],
) -> None:
    server, _ = web
    async with aiohttp.ClientSession() as http, http.get(server.where + "/") as resp:
        assert resp.status == 200
        page = await resp.text()
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    for i in range(1, 6):
        assert f'id="layer&#45;layer&#45;00{i}"' in page
    # Every src/href is a path on this server.
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith("/") and not url.startswith("//"), url


async def test_nodes_change_over_sse_as_events_arrive(web: tuple[WebServer, FakeSource]
                                                      ) -> None:
    server, source = web
    async with aiohttp.ClientSession() as http, http.get(server.where + "/events") as resp:
        events = sse_events(resp)
        kind, first = await asyncio.wait_for(anext(events), 5)
        assert kind == "nodes" and {n["id"] for n in first} == set(source.catalog().layers)
        source.publish("build_started", layer="layer-002", builder="local", build_id="b9")
        nodes = await asyncio.wait_for(next_nodes(events), 5)
        assert nodes[0]["state"] == "building"
        assert nodes[0]["text"] == "building on local"
        source.publish("build_finished", layer="layer-002", outcome="failed",
                       error="ERROR: exit 3", builder="local")
        changed = {n["id"]: n for n in await asyncio.wait_for(next_nodes(events), 5)}
        assert changed["layer-002"]["text"] == "FAILED: ERROR: exit 3"


async def next_nodes(events: AsyncIterator[tuple[str, Any]]) -> list[dict[str, Any]]:
    async for kind, data in events:
        if kind == "nodes":
            return list(data)
    raise AssertionError("the stream ended")


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    kind, data = "message", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif not line and data:
            yield kind, json.loads("\n".join(data))
            kind, data = "message", []


async def test_a_running_builds_log_streams_until_it_ends(
    web: tuple[WebServer, FakeSource], tmp_path: Path
) -> None:
    server, source = web
    log = tmp_path / "b1.log"
    log.write_text("step 1 <b>\n")
    source.builds_by_id["b1"] = {"id": "b1", "layer": "base", "outcome": "running",
                                 "started_at": 1.0, "log_path": str(log)}
    async with aiohttp.ClientSession() as http, \
            http.get(server.where + "/builds/b1/log") as resp:
        body = b""
        async for chunk in resp.content.iter_any():
            body += chunk
            if b"step 1" in body and b"step 2" not in body:
                with log.open("a") as fh:
                    fh.write("step 2\n")
                source.builds_by_id["b1"]["outcome"] = "built"
            if b"event: end" in body:
                break
    text = body.decode()
    assert "step 1 &lt;b&gt;" in text and "step 2" in text


async def test_pages_render(web: tuple[WebServer, FakeSource]) -> None:
    server, _ = web
    async with aiohttp.ClientSession() as http:
        for path in ("/layers/base", "/layers/layer-001/history", "/layers/base/papers",
                     "/runs", "/runs/panel", "/plots.json", "/graph.svg", "/picture.css",
                     "/layers/base/sbom-diff?old=sha256:1&new=sha256:2",
                     "/static/vendor/htmx-2.0.11.min.js"):
            async with http.get(server.where + path) as resp:
                assert resp.status == 200, (path, await resp.text())
        async with http.get(server.where + "/layers/nope") as resp:
            assert resp.status == 404


async def test_without_a_token_no_action_is_offered_and_posts_are_refused(
    readonly: tuple[WebServer, FakeSource],
) -> None:
    server, source = readonly
    async with aiohttp.ClientSession() as http:
        async with http.get(server.where + "/layers/base") as resp:
            page = await resp.text()
        assert "/trigger" not in page and "sign in" not in page and "read-only" in page
        for path in ("/layers/base/trigger", "/builds/b1/cancel", "/sign-in"):
            async with http.post(server.where + path, data={"csrf": "x", "token": TOKEN}) \
                    as resp:
                assert resp.status == 403
    assert source.triggered == [] and source.cancelled == []


async def test_actions_need_a_session_and_its_csrf_token(web: tuple[WebServer, FakeSource]
                                                         ) -> None:
    server, source = web
    url = server.where + "/layers/base/trigger"
    # (unsafe: a jar that keeps cookies of an IP address such as 127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(url, data={"csrf": "forged"}) as resp:
            assert resp.status == 403  # no session
        async with http.post(server.where + "/sign-in", data={"token": "wrong"}) as resp:
            assert resp.status == 403
        async with http.post(server.where + "/sign-in", data={"token": TOKEN, "back": "//evil"},
                             allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/"
            assert "HttpOnly" in resp.headers["Set-Cookie"]
            assert "SameSite=Strict" in resp.headers["Set-Cookie"]
        async with http.get(server.where + "/layers/base") as resp:
            page = await resp.text()
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert csrf is not None and 'id="trigger"' in page
        async with http.post(url, data={"csrf": "0" * 64}) as resp:
            assert resp.status == 403  # a session, but a forged CSRF token
        async with http.post(url, data={"csrf": csrf.group(1)},
                             headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 403  # another site's page
        async with http.post(url, data={"csrf": csrf.group(1), "force": "1"},
                             allow_redirects=False) as resp:
            assert resp.status == 303
    assert source.triggered == [(["base"], True, source.triggered[0][2])]
    async with aiohttp.ClientSession() as http, http.post(
            url, headers={"Authorization": f"Bearer {TOKEN}"}, allow_redirects=False) as resp:
        assert resp.status == 303  # a script with the token


def test_a_short_or_missing_token_file_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "t"
    short.write_text("abc\n")
    source = FakeSource(catalog_of(2), tmp_path / "s.db")
    with pytest.raises(InputError, match="shorter than 16"):
        WebServer(source, WebConfig(listen=("127.0.0.1", 0), token_file=short))
    with pytest.raises(InputError, match="cannot read"):
        WebServer(source, WebConfig(listen=("127.0.0.1", 0), token_file=tmp_path / "none"))


async def test_a_name_the_page_was_not_given_is_refused(web: tuple[WebServer, FakeSource]
                                                        ) -> None:
    """DNS rebinding: another site's name pointed at 127.0.0.1 reads nothing."""
    server, _ = web
    async with aiohttp.ClientSession() as http:
        async with http.get(server.where + "/", headers={"Host": "evil.example:9465"}) as resp:
            assert resp.status == 421
        for host in ("localhost:9465", "127.0.0.1", "[::1]:80"):
            async with http.get(server.where + "/picture.css", headers={"Host": host}) as resp:
                assert resp.status == 200, host


def test_allowed_hosts() -> None:
    from orchestrator.service.web.server import allowed_host

    assert allowed_host("builds.example.org", ("builds.example.org",))
    assert not allowed_host("builds.example.org.evil", ("builds.example.org",))
    assert allowed_host("10.1.2.3:9465", ())
