"""A small OCI distribution client: manifest digests and tag lists.

Speaks the distribution spec over a :mod:`transport`: HEAD on manifests with the OCI and
Docker Accept headers (GET and sha256 of the body when a registry gives no
``Docker-Content-Digest``), tag lists with ``Link`` pagination, and both auth
schemes registries ask for (Basic, and Bearer tokens from the realm named in
``WWW-Authenticate``). Authorization headers are never logged.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import RegistryError
from orchestrator.core.imageref import ImageRef, is_loopback
from orchestrator.registry.auth import AuthStore, Credentials
from orchestrator.registry.transport import PooledTransport, Transport, TransportError, origin

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
MAX_TAG_PAGES = 1000  # of up to 1,000 tags each
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    def json(self) -> dict[str, Any]:
        return _json(self.body)


def basic_auth(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(params))


class RegistryClient:
    """One per run or daemon; owns its transport (connections) and a token cache."""

    def __init__(self, auth: AuthStore | None = None, *, insecure: frozenset[str] = frozenset(),
                 timeout_s: float = 30.0, transport: Transport | None = None,
                 on_request: Callable[[str, str, str], None] | None = None) -> None:
        self._auth = auth or AuthStore.empty()
        self._insecure = set(insecure)  # hosts spoken to over plain HTTP
        self._tokens: dict[tuple[str, str], str] = {}
        self._transport: Transport = transport or PooledTransport(timeout_s)
        # (registry, method, status code or "error") after every request, for metrics
        self.on_request = on_request or (lambda registry, method, code: None)

    def allow_insecure(self, host: str) -> None:
        self._insecure.add(host)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    def _scheme(self, ref: ImageRef) -> str:
        # Loopback registries speak plain HTTP, as every engine assumes for them.
        plain = ref.registry in self._insecure or is_loopback(ref.registry)
        return "http" if plain else "https"

    def _base(self, ref: ImageRef) -> str:
        scheme = self._scheme(ref)
        return f"{scheme}://{ref.api_host}/v2/{ref.repository}"

    async def answers(self, ref: ImageRef) -> bool:
        """Whether the registry of ``ref`` answers at all (any HTTP status of its
        ``/v2/`` base, 401 included): a failed push is worth trying again."""
        url = f"{self._scheme(ref)}://{ref.api_host}/v2/"
        try:
            await self._send("GET", ref, url, {})
        except RegistryError:
            return False
        return True

    async def manifest_digest(self, ref: ImageRef, reference: str) -> str | None:
        """The digest a tag (or digest) points at, or None when it does not exist."""
        url = f"{self._base(ref)}/manifests/{reference}"
        headers = {"Accept": MANIFEST_TYPES}
        status, resp_headers, _ = await self._request("HEAD", ref, url, headers)
        if status == 404:
            return None
        self._raise_for(ref, status, "HEAD manifest", resp_headers)
        digest = resp_headers.get("Docker-Content-Digest")
        if digest:
            return digest
        # Some registries omit the header on HEAD: the digest is the body's sha256.
        status, resp_headers, body = await self._request("GET", ref, url, headers)
        if status == 404:
            return None
        self._raise_for(ref, status, "GET manifest", resp_headers)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    async def get_manifest(self, ref: ImageRef, reference: str) -> Manifest | None:
        """A manifest's bytes, media type and digest (None when it does not exist)."""
        url = f"{self._base(ref)}/manifests/{reference}"
        status, headers, body = await self._request("GET", ref, url, {"Accept": MANIFEST_TYPES})
        if status == 404:
            return None
        self._raise_for(ref, status, "GET manifest", headers)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(ref.registry, f"manifest {reference[:19]} of {ref.repository}: "
                                f"the registry sent other bytes ({digest[:19]})")
        media_type = headers.get("Content-Type") or str(_json(body).get("mediaType") or "")
        return Manifest(digest, media_type, body)

    async def put_manifest(self, ref: ImageRef, reference: str, body: bytes,
                           media_type: str) -> Mapping[str, str]:
        """PUT a manifest under a tag or its digest; returns the response headers
        (``OCI-Subject`` tells a registry with the referrers API indexed it)."""
        status, headers, _ = await self._request(
            "PUT", ref, f"{self._base(ref)}/manifests/{reference}", {"Content-Type": media_type},
            data=body, actions="pull,push")
        self._raise_for(ref, status, "PUT manifest", headers)
        return headers

    async def referrers_index(self, ref: ImageRef, digest: str) -> dict[str, Any] | None:
        """The OCI 1.1 referrers API's index for ``digest``; None where the registry
        has no such API (then the referrers tag scheme applies)."""
        status, headers, body = await self._request(
            "GET", ref, f"{self._base(ref)}/referrers/{digest}", {"Accept": INDEX_TYPE})
        if status in (404, 405, 400):
            return None
        self._raise_for(ref, status, "GET referrers", headers)
        data = _json(body)
        return data if data.get("manifests") is not None else None

    async def delete_manifest(self, ref: ImageRef, digest: str) -> bool:
        """DELETE by digest (the registry must allow deletes); False when already gone."""
        status, headers, _ = await self._request(
            "DELETE", ref, f"{self._base(ref)}/manifests/{digest}", {}, actions="pull,push,delete")
        if status == 404:
            return False
        self._raise_for(ref, status, "DELETE manifest", headers)
        return True

    async def upload_blob(self, ref: ImageRef, data: bytes) -> str:
        """Push a small blob (a statement, an SBOM) in one request; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, _ = await self._request(
            "HEAD", ref, f"{self._base(ref)}/blobs/{digest}", {}, actions="pull,push")
        if status == 200:
            return digest
        status, headers, _ = await self._request(
            "POST", ref, f"{self._base(ref)}/blobs/uploads/", {"Content-Length": "0"},
            data=b"", actions="pull,push")
        self._raise_for(ref, status, "POST blob upload", headers)
        location = headers.get("Location") or ""
        if not location:
            raise RegistryError(ref.registry, "blob upload: no Location in the answer")
        if "://" not in location:
            location = f"{self._scheme(ref)}://{ref.api_host}{location}"
        location += ("&" if "?" in location else "?") + urllib.parse.urlencode(
            {"digest": digest})
        status, headers, _ = await self._request(
            "PUT", ref, location, {"Content-Type": "application/octet-stream"}, data=data,
            actions="pull,push")
        self._raise_for(ref, status, "PUT blob", headers)
        return digest

    async def get_blob(self, ref: ImageRef, digest: str) -> bytes:
        """A blob, checked against its digest (registries redirect these to storage)."""
        status, headers, body = await self._request(
            "GET", ref, f"{self._base(ref)}/blobs/{digest}", {})
        self._raise_for(ref, status, "GET blob", headers)
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError(ref.registry, f"blob {digest[:19]} does not match its digest")
        return body

    async def download_blob(self, ref: ImageRef, digest: str, dest: Path) -> None:
        """A blob streamed to ``dest`` (image layers: never held in memory), checked
        against its digest."""
        status, headers, _ = await self._request(
            "GET", ref, f"{self._base(ref)}/blobs/{digest}", {}, dest=dest)
        self._raise_for(ref, status, "GET blob", headers)
        h = hashlib.sha256()
        with dest.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise RegistryError(ref.registry, f"blob {digest[:19]} does not match its digest")

    async def retag(self, ref: ImageRef, digest: str, tag: str) -> bool:
        """Point ``tag`` at the manifest ``digest`` (no blobs move: a manifest PUT).
        Returns False when the tag already pointed there."""
        if await self.manifest_digest(ref, tag) == digest:
            return False
        url = f"{self._base(ref)}/manifests/{digest}"
        status, headers, body = await self._request("GET", ref, url, {"Accept": MANIFEST_TYPES})
        self._raise_for(ref, status, "GET manifest", headers)
        media_type = headers.get("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        status, headers, _ = await self._request(
            "PUT", ref, f"{self._base(ref)}/manifests/{tag}", {"Content-Type": media_type},
            data=body, actions="pull,push")
        self._raise_for(ref, status, "PUT manifest", headers)
        return True

    async def tags(self, ref: ImageRef, page_size: int = 1000) -> list[str]:
        return await self._tags_from(ref, f"{self._base(ref)}/tags/list?n={page_size}")

    async def _tags_from(self, ref: ImageRef, first: str) -> list[str]:
        url: str | None = first
        out: list[str] = []
        seen: set[str] = set()
        while url is not None:
            # A registry that hands back a page it already gave (or never ends)
            # must not keep a poller busy for ever.
            if url in seen or len(seen) >= MAX_TAG_PAGES:
                raise RegistryError(ref.registry, f"tag list of {ref.repository}: the "
                                    f"registry's pages repeat or pass {MAX_TAG_PAGES}")
            seen.add(url)
            status, headers, body = await self._request("GET", ref, url, {})
            if status == 404:
                return out
            self._raise_for(ref, status, "GET tags/list", headers)
            data: dict[str, Any] = _json(body)
            out.extend(data.get("tags") or [])
            match = _NEXT_LINK.search(headers.get("Link", ""))
            url = None
            if match:
                nxt = match.group(1)
                scheme = self._scheme(ref)
                url = nxt if "://" in nxt else f"{scheme}://{ref.api_host}{nxt}"
        return out

    def _raise_for(self, ref: ImageRef, status: int, what: str,
                   headers: Mapping[str, str] | None = None) -> None:
        if status >= 400:
            retry_after = _retry_after((headers or {}).get("Retry-After"))
            hint = ""
            if status == 401:
                hint = " (unauthorized: check [registry] auth_file)"
            elif status == 429:
                hint = " (rate limited)"
            raise RegistryError(ref.registry, f"{what} for {ref.repository}: HTTP {status}{hint}",
                                status, retry_after)

    async def _request(self, method: str, ref: ImageRef, url: str,
                       headers: Mapping[str, str], data: bytes | None = None,
                       actions: str = "pull", dest: Path | None = None
                       ) -> tuple[int, Mapping[str, str], bytes]:
        scope = f"repository:{ref.repository}:{actions}"
        creds = self._auth.lookup(ref.registry, ref.repository)
        token_key = (ref.api_host, scope)
        # Credentials go to the registry itself only: a next-page Link or an upload
        # Location naming another host (or plain http) gets none.
        ours = origin(url) == origin(f"{self._scheme(ref)}://{ref.api_host}/")
        for attempt in range(2):
            sent = dict(headers)
            if ours and token_key in self._tokens:
                sent["Authorization"] = self._tokens[token_key]
            status, resp_headers, body = await self._send(method, ref, url, sent, data, dest)
            if status != 401 or attempt == 1 or not ours:
                return status, resp_headers, body
            challenge = resp_headers.get("WWW-Authenticate", "")
            scheme, params = parse_challenge(challenge)
            if scheme == "bearer" and "realm" in params:
                token = await self._fetch_token(ref, params, scope, creds)
                self._tokens[token_key] = f"Bearer {token}"
            elif scheme == "basic" and creds is not None:
                self._tokens[token_key] = basic_auth(creds)
            else:
                return status, resp_headers, body
        raise AssertionError("unreachable")

    async def _fetch_token(self, ref: ImageRef, params: dict[str, str], scope: str,
                           creds: Credentials | None) -> str:
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Authorization": basic_auth(creds)} if creds else {}
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        try:
            resp = await self._transport.request("GET", url, headers)
        except TransportError as exc:
            raise RegistryError(ref.registry, f"token request failed: {exc}") from exc
        if resp.status >= 400:
            raise RegistryError(ref.registry, f"token request failed: HTTP {resp.status}",
                                resp.status)
        data = _json(resp.body)
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str):
            raise RegistryError(ref.registry, "token response has no token")
        return token

    async def _send(self, method: str, ref: ImageRef, url: str, headers: Mapping[str, str],
                    data: bytes | None = None, dest: Path | None = None
                    ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            resp = await self._transport.request(method, url, headers, data, dest)
        except TransportError as exc:
            self.on_request(ref.registry, method, "error")
            raise RegistryError(ref.registry, f"{method} {url.split('?')[0]}: {exc}") from exc
        self.on_request(ref.registry, method, str(resp.status))
        return resp.status, resp.headers, resp.body


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
