"""The Docker engine's API finds the engine as the Docker CLI does: DOCKER_HOST,
and DOCKER_TLS_VERIFY/DOCKER_CERT_PATH for a remote engine (rootless Docker,
a TCP engine). A fake engine answers ``/version`` on a Unix socket and on
mutual TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.core.errors import BackendError
from orchestrator.engines.docker_api import DEFAULT_HOST, DockerApi, endpoint


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"Version": "99.0-fake", "ApiVersion": "1.41"})


def _engine() -> web.Application:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _version)
    return app


@pytest.fixture
async def unix_engine(tmp_path: Path) -> AsyncIterator[str]:
    runner = web.AppRunner(_engine())
    await runner.setup()
    path = tmp_path / "docker.sock"
    await web.UnixSite(runner, str(path)).start()
    yield f"unix://{path}"
    await runner.cleanup()


async def test_docker_host_is_honoured_without_a_configured_address(
        unix_engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", unix_engine)
    api = DockerApi(None)
    assert await api.version() == "99.0-fake"
    assert api.host == unix_engine


async def test_a_configured_address_wins_over_docker_host(
        unix_engine: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    assert await DockerApi(unix_engine).version() == "99.0-fake"


async def test_nothing_set_is_the_clis_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert endpoint(None, {}).url == DEFAULT_HOST
    assert DockerApi(None).host == DEFAULT_HOST


async def test_an_unreachable_engine_is_named_in_the_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    where = f"unix://{tmp_path}/absent.sock"
    monkeypatch.setenv("DOCKER_HOST", where)
    with pytest.raises(BackendError, match=f"the Docker engine at {where}: version"):
        await DockerApi(None).version()


def _key_and_cert(subject: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
                  | None, ca: bool = False) -> tuple[ec.EllipticCurvePrivateKey,
                                                     x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer[1].subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer[0] if issuer else key, hashes.SHA256())
    return key, cert


def _write(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey,
           cert: x509.Certificate) -> None:
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.fixture
async def tls_engine(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An engine on 127.0.0.1 that wants a client certificate signed by its CA;
    the client's files laid out as DOCKER_CERT_PATH expects them."""
    ca = _key_and_cert("fake docker CA", None, ca=True)
    server = _key_and_cert("127.0.0.1", ca)
    client = _key_and_cert("client", ca)
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    _write(certs, "cert", *client)
    (certs / "key.pem").write_bytes((certs / "cert-key.pem").read_bytes())
    _write(tmp_path, "server", *server)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(tmp_path / "server.pem"), str(tmp_path / "server-key.pem"))
    runner = web.AppRunner(_engine())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"tcp://127.0.0.1:{port}", certs
    await runner.cleanup()


async def test_tls_verify_and_cert_path_reach_a_remote_engine(
        tls_engine: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    host, certs = tls_engine
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
    assert await DockerApi(None).version() == "99.0-fake"


async def test_without_tls_settings_a_tls_engine_is_not_reached(
        tls_engine: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    host, _certs = tls_engine
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_TLS", raising=False)
    with pytest.raises(BackendError, match=f"the Docker engine at {host}"):
        await DockerApi(None).version()


def test_tls_verify_without_the_files_is_one_clear_error(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": "tcp://engine.example:2376", "DOCKER_TLS_VERIFY": "1",
           "DOCKER_CERT_PATH": str(tmp_path)}
    with pytest.raises(BackendError, match="DOCKER_CERT_PATH"):
        endpoint(None, env)


def test_tls_verify_follows_the_cli_any_non_empty_value_is_on(tmp_path: Path) -> None:
    """The Docker CLI takes DOCKER_TLS_VERIFY=0 as "on" too (any non-empty value)."""
    env = {"DOCKER_HOST": "tcp://engine.example:2376", "DOCKER_TLS_VERIFY": "0",
           "DOCKER_CERT_PATH": str(tmp_path)}
    with pytest.raises(BackendError, match="TLS settings"):
        endpoint(None, env)
    plain = endpoint(None, {"DOCKER_HOST": "tcp://engine.example:2375"})
    assert plain.tls is None and plain.url == "tcp://engine.example:2375"
