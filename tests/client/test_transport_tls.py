"""client.transport and TLS: the CA bundle is loaded only for https, which is still verified when a plain
http repository URL redirects there; proxies from the environment are still used."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tuf.api.exceptions import DownloadError

from pinnacle_updates.client import transport
from pinnacle_updates.client.hooks import probe_url
from pinnacle_updates.client.transport import HttpxFetcher, TransportSettings

BODY = b"served over TLS\n" * 100
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxies_and_fresh_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the machine's environment, and the process-wide TLS context built afresh."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setattr(transport, "_TLS", [])


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) PEM files: a test CA and a certificate it
    issued for 127.0.0.1."""
    out = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder().subject_name(_name("pinnacle test CA")).issuer_name(_name("pinnacle test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (out / "ca.pem", out / "server.pem", out / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class _Server:
    """A server on 127.0.0.1 answering every GET with ``answer(handler)``; https with ``tls``."""

    def __init__(self, answer: Any, tls: ssl.SSLContext | None = None) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(BODY)))
    handler.end_headers()
    handler.wfile.write(BODY)


@pytest.fixture
def redirected(pki: tuple[Path, Path, Path]) -> Iterator[tuple[_Server, _Server]]:
    """(http server redirecting every path to the https server, https server with the test CA's certificate)."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki[1], pki[2])
    secure = _Server(_body, tls)

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(301)
        handler.send_header("Location", secure.url + handler.path.lstrip("/"))
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    plain = _Server(redirect)
    try:
        yield plain, secure
    finally:
        plain.close()
        secure.close()


def _fetch(url: str) -> bytes:
    with HttpxFetcher(TransportSettings(retries=0)) as f:
        return b"".join(f.fetch(url))


def test_plain_http_never_builds_the_tls_context() -> None:
    server = _Server(_body)
    try:
        assert _fetch(server.url + "blob") == BODY
    finally:
        server.close()
    assert transport._TLS == []


def test_a_redirect_to_https_is_followed_and_verified(
    redirected: tuple[_Server, _Server], pki: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, secure = redirected
    monkeypatch.setenv("SSL_CERT_FILE", str(pki[0]))  # httpx's context trusts the test CA
    assert _fetch(plain.url + "blob") == BODY
    assert plain.paths == ["/blob"] and secure.paths == ["/blob"]
    assert len(transport._TLS) == 1


def test_a_redirect_to_an_untrusted_certificate_is_refused(redirected: tuple[_Server, _Server]) -> None:
    plain, secure = redirected
    with pytest.raises(DownloadError, match=r"(?i)certificate verify failed"):
        _fetch(plain.url + "blob")
    assert plain.paths == ["/blob"] and secure.paths == []


def test_an_unreadable_ca_file_is_a_download_error(
    redirected: tuple[_Server, _Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, _ = redirected
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(DownloadError, match="cannot load the TLS certificates"):
        _fetch(plain.url + "blob")


def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _Server(_body)
    monkeypatch.setenv("http_proxy", proxy.url)
    try:
        assert _fetch("http://repository.invalid/metadata/timestamp.json") == BODY
    finally:
        proxy.close()
    assert proxy.paths == ["http://repository.invalid/metadata/timestamp.json"]


def test_health_probes_share_the_tls_choice(
    redirected: tuple[_Server, _Server], pki: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client.hooks.probe_url uses verify_context: plain http loads no CA bundle, https is verified with the
    process's context (SSL_CERT_FILE honoured), and a CA bundle that cannot be loaded is one line, not a crash."""
    plain, secure = redirected
    ok, reason, _ = probe_url(plain.url + "health", 5)
    assert (ok, reason) == (False, f"{plain.url}health answered HTTP 301") and transport._TLS == []
    ok, reason, _ = probe_url(secure.url + "health", 5)  # the test CA is not trusted yet
    assert not ok and "certificate verify failed" in reason.lower()
    monkeypatch.setattr(transport, "_TLS", [])
    monkeypatch.setenv("SSL_CERT_FILE", str(pki[0]))
    assert probe_url(secure.url + "health", 5)[:2] == (True, f"{secure.url}health answered 200")
    monkeypatch.setattr(transport, "_TLS", [])
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    ok, reason, _ = probe_url(secure.url + "health", 5)
    assert not ok and "cannot load the TLS certificates" in reason and "\n" not in reason
