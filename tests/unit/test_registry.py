"""The registry client against a scripted registry: token auth, digest fallback, paging."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.core.errors import RegistryError
from orchestrator.core.imageref import parse_repository
from orchestrator.registry.aiohttp_transport import AiohttpTransport
from orchestrator.registry.auth import AuthStore
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.transport import (
    MAX_BODY,
    PooledTransport,
    Transport,
    TransportError,
    redirect_headers,
)

MANIFEST = b'{"schemaVersion": 2}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
TAGS = [f"3.{i}" for i in range(25)]


class ScriptedRegistry:
    def __init__(self) -> None:
        self.token_requests: list[dict[str, str]] = []
        self.seen_auth: list[str] = []
        self.tag_hosts: list[tuple[str, str]] = []
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_route("*", "/v2/{repo:.+}/manifests/{ref}", self.manifest)
        app.router.add_get("/v2/{repo:.+}/tags/list", self.tags)
        app.router.add_get("/moved/{repo:.+}/manifests/{ref}", self.moved)
        app.router.add_get("/storage/blob", self.storage)
        app.router.add_get("/huge", self.huge)
        app.router.add_get("/trickle", self.trickle)
        return app

    async def huge(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_BODY + 1))

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        # A byte at a time, each well within any socket timeout: only a total
        # deadline ends it.
        resp = web.StreamResponse(headers={"Content-Length": "40"})
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b"x")
            await asyncio.sleep(0.1)
        return resp

    async def moved(self, request: web.Request) -> web.Response:
        # The registry sends reads elsewhere; the credentials must not follow
        # when the host changes ("localhost" vs "127.0.0.1": another host).
        target = request.query.get("to", "")
        return web.Response(status=307, headers={"Location": target})

    async def storage(self, request: web.Request) -> web.Response:
        self.seen_auth.append("storage:" + request.headers.get("Authorization", ""))
        return web.Response(body=MANIFEST)

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append({**request.query,
                                    "auth": request.headers.get("Authorization", "")})
        return web.json_response({"token": "tok-123"})

    def _challenge(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        self.seen_auth.append(auth)
        if auth != "Bearer tok-123":
            return web.Response(status=401, headers={"WWW-Authenticate": (
                f'Bearer realm="{self.base}/token",service="scripted",'
                f'scope="repository:{request.match_info["repo"]}:pull"')})
        return None

    async def manifest(self, request: web.Request) -> web.Response:
        if (denied := self._challenge(request)) is not None:
            return denied
        if request.match_info["ref"] == "missing":
            return web.Response(status=404)
        # No Docker-Content-Digest on purpose: the client must hash the body.
        return web.Response(body=MANIFEST if request.method == "GET" else None,
                            content_type="application/vnd.oci.image.manifest.v1+json")

    async def tags(self, request: web.Request) -> web.Response:
        self.tag_hosts.append((request.host, request.headers.get("Authorization", "")))
        if (denied := self._challenge(request)) is not None:
            return denied
        start = int(request.query.get("last", "-1")) + 1
        page = TAGS[start:start + 10]
        headers = {}
        repo = request.match_info["repo"]
        if request.query.get("pages") == "loop":  # always the same next page
            headers["Link"] = f'</v2/{repo}/tags/list?n=10&pages=loop>; rel="next"'
        elif request.query.get("pages") == "away":  # the next page on another host
            port = request.host.rsplit(":", 1)[1]
            headers["Link"] = (f'<http://localhost:{port}/v2/{repo}/tags/list?n=10&last=9>; '
                               'rel="next"')
        elif start + 10 < len(TAGS):
            headers["Link"] = f'</v2/{repo}/tags/list?n=10&last={start + 9}>; rel="next"'
        return web.json_response({"tags": page}, headers=headers)


@pytest.fixture
async def registry() -> AsyncIterator[tuple[ScriptedRegistry, str]]:
    scripted = ScriptedRegistry()
    server = TestServer(scripted.app(), host="127.0.0.1")
    await server.start_server()
    host = f"127.0.0.1:{server.port}"
    scripted.base = f"http://{host}"
    yield scripted, host
    await server.close()


@pytest.fixture(params=["pooled", "aiohttp"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Every behaviour holds for both transports: the one-shot CLI's and the daemon's."""
    return PooledTransport(5.0) if request.param == "pooled" else AiohttpTransport(5.0)


def auth_file(tmp_path: Path, host: str) -> AuthStore:
    path = tmp_path / "auth.json"
    token = base64.b64encode(b"alice:s3cret").decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return AuthStore.load(path)


def signed_in(tmp_path: Path, host: str, transport: Transport) -> RegistryClient:
    """A client with alice's credentials for the scripted registry."""
    return RegistryClient(auth_file(tmp_path, host), insecure=frozenset({host}),
                          transport=transport)


async def test_token_auth_and_digest_from_body(
    registry: tuple[ScriptedRegistry, str], tmp_path: Path, transport: Transport
) -> None:
    scripted, host = registry
    async with signed_in(tmp_path, host, transport) as client:
        ref = parse_repository(f"{host}/library/alpine")
        assert await client.manifest_digest(ref, "3.20") == DIGEST
        assert await client.manifest_digest(ref, "missing") is None
    request = scripted.token_requests[0]
    assert request["scope"] == "repository:library/alpine:pull"
    assert request["service"] == "scripted"
    assert request["auth"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert len(scripted.token_requests) == 1  # the token is cached for later requests


async def test_tag_list_follows_pagination(registry: tuple[ScriptedRegistry, str],
                                           transport: Transport) -> None:
    _, host = registry
    async with RegistryClient(insecure=frozenset({host}), transport=transport) as client:
        tags = await client.tags(parse_repository(f"{host}/library/alpine"), page_size=10)
    assert tags == TAGS


async def test_redirects_are_followed_without_credentials_to_another_host(
        registry: tuple[ScriptedRegistry, str], transport: Transport) -> None:
    scripted, host = registry
    port = host.split(":")[1]
    same = f"http://{host}/storage/blob"
    other = f"http://localhost:{port}/storage/blob"
    for target in (same, other):
        resp = await transport.request("GET", f"http://{host}/moved/x/manifests/1?to={target}",
                                       {"Authorization": "Bearer tok-123"})
        assert resp.status == 200 and resp.body == MANIFEST
    await transport.close()
    assert scripted.seen_auth == ["storage:Bearer tok-123", "storage:"]


async def test_pooled_transport_keeps_connections_alive(
        registry: tuple[ScriptedRegistry, str]) -> None:
    _, host = registry
    transport = PooledTransport(5.0)
    connects = 0
    real_checkout = transport._checkout

    def counting(key: tuple[str, str, int]) -> object:
        nonlocal connects
        conn, reused = real_checkout(key)
        connects += not reused
        return conn, reused

    transport._checkout = counting  # type: ignore[assignment,method-assign]
    async with RegistryClient(insecure=frozenset({host}), transport=transport) as client:
        for _ in range(10):  # one after another: one connection serves them all
            await client.tags(parse_repository(f"{host}/library/alpine"), page_size=10)
    assert connects == 1


async def test_unreachable_registry_is_a_clear_error(transport: Transport) -> None:
    async with RegistryClient(insecure=frozenset({"127.0.0.1:9"}), timeout_s=5,
                              transport=transport) as client:
        with pytest.raises(RegistryError, match=r"registry 127\.0\.0\.1:9: HEAD"):
            await client.manifest_digest(parse_repository("127.0.0.1:9/x"), "1")


def test_auth_store_lookup_and_secrecy(tmp_path: Path) -> None:
    store = auth_file(tmp_path, "reg.example:5000")
    creds = store.lookup("reg.example:5000", "base/python")
    assert creds is not None and creds.username == "alice"
    assert "s3cret" not in repr(creds)
    assert store.lookup("other.example") is None


def test_docker_hub_names() -> None:
    ref = parse_repository("alpine")
    assert (ref.registry, ref.repository, ref.api_host) == (
        "docker.io", "library/alpine", "registry-1.docker.io")
    assert parse_repository("localhost:5000/a/b").repository == "a/b"


async def test_a_repeating_or_foreign_tag_list_is_refused(
        registry: tuple[ScriptedRegistry, str], tmp_path: Path, transport: Transport) -> None:
    scripted, host = registry
    async with signed_in(tmp_path, host, transport) as client:
        ref = parse_repository(f"{host}/library/alpine")
        base = f"http://{host}/v2/library/alpine/tags/list"
        with pytest.raises(RegistryError, match="pages repeat"):
            await client._tags_from(ref, f"{base}?n=10&pages=loop")
        with pytest.raises(RegistryError, match="HTTP 401"):
            await client._tags_from(ref, f"{base}?n=10&pages=away")
    away = [auth for where, auth in scripted.tag_hosts if where.startswith("localhost")]
    assert away == [""], scripted.tag_hosts  # no token went to the other host
    assert all(auth for where, auth in scripted.tag_hosts[1:] if where.startswith("127."))


async def test_a_manifest_by_digest_must_have_that_digest(
        registry: tuple[ScriptedRegistry, str], tmp_path: Path, transport: Transport) -> None:
    _, host = registry
    async with signed_in(tmp_path, host, transport) as client:
        ref = parse_repository(f"{host}/library/alpine")
        assert (await client.get_manifest(ref, DIGEST)) is not None
        with pytest.raises(RegistryError, match="sent other bytes"):
            await client.get_manifest(ref, "sha256:" + "0" * 64)


async def test_oversized_and_never_ending_answers_are_cut_off(
        registry: tuple[ScriptedRegistry, str]) -> None:
    _, host = registry
    for transport in (PooledTransport(1.0), AiohttpTransport(1.0)):
        with pytest.raises(TransportError, match="larger than"):
            await transport.request("GET", f"http://{host}/huge", {})
        started = asyncio.get_running_loop().time()
        with pytest.raises(TransportError):
            await transport.request("GET", f"http://{host}/trickle", {})
        assert asyncio.get_running_loop().time() - started < 3.5  # not the 4 s it drips
        await transport.close()


def test_credentials_do_not_survive_a_downgrade_to_http() -> None:
    sent = {"Authorization": "Basic x", "Accept": "a"}
    assert redirect_headers(sent, "https://r.example/v2/", "https://r.example:443/x") == sent
    assert "Authorization" not in redirect_headers(sent, "https://r.example/v2/",
                                                   "http://r.example/x")
    assert "Authorization" not in redirect_headers(sent, "https://r.example/v2/",
                                                   "https://r.example:8443/x")
